// The page of `tusd-py serve --demo`: an Uppy Dashboard that uploads to this server's own tus
// endpoint. Built by build.mjs into tusd_py/http/demo/demo.js (+ demo.css from the imports).

import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'

import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'
import './page.css'

const MiB = 1024 * 1024

// The server writes its creation URL into the page (it depends on --base-path and on where the
// app is mounted), so the bundle itself stays the same for every configuration.
const endpointMeta = document.querySelector('meta[name="tus-endpoint"]')
const endpoint = new URL(endpointMeta?.content || '/files/', window.location.href).href

// What happened, in order, for anyone watching the page (the browser interop test reads it).
// Each entry: {type: 'progress'|'success'|'error', id, name, bytesUploaded, bytesTotal, url}.
window.demoEvents = []

function record(type, file, extra) {
  const entry = {
    type,
    id: file?.id ?? null,
    name: file?.name ?? null,
    bytesUploaded: null,
    bytesTotal: file?.size ?? null,
    url: file?.tus?.uploadUrl ?? file?.response?.uploadURL ?? null,
    ...extra,
  }
  window.demoEvents.push(entry)
  return entry
}

const uppy = new Uppy({ autoProceed: false, debug: false })
  .use(Dashboard, {
    inline: true,
    target: '#dashboard',
    width: '100%',
    height: 420,
    showProgressDetails: true,
    proudlyDisplayPoweredByUppy: false,
    note: `Files go to ${endpoint}`,
  })
  .use(Tus, {
    endpoint,
    // PATCHes of a few MiB: a restarted server loses at most one chunk in flight, and the
    // progress bar moves in visible steps.
    chunkSize: 2 * MiB,
    // Long enough to outlast a server restart (about 25 s in all): the client then asks the
    // server (HEAD) where to go on, so the upload resumes instead of starting again.
    retryDelays: [0, 500, 1000, 2000, 3000, 5000, 5000, 5000, 5000],
    // Keep the upload URL in localStorage after success too, so adding the same file again
    // finds the finished upload instead of sending it twice.
    removeFingerprintOnSuccess: false,
  })

window.demoUppy = uppy

uppy.on('upload-progress', (file, progress) => {
  record('progress', file, {
    bytesUploaded: progress.bytesUploaded,
    bytesTotal: progress.bytesTotal ?? file?.size ?? null,
  })
})

uppy.on('upload-success', (file, response) => {
  const url = response?.uploadURL ?? file?.tus?.uploadUrl ?? null
  record('success', file, { bytesUploaded: file?.size ?? null, url })
  if (url) addDownloadLink(file, url)
})

uppy.on('upload-error', (file, error) => {
  record('error', file, { message: String(error?.message ?? error) })
})

// A plain link per finished upload: GET on the upload URL returns its bytes, no tus client
// needed. `download` keeps the browser from trying to show, say, an HTML file it fetched.
function addDownloadLink(file, url) {
  const list = document.getElementById('uploads')
  if (!list) return
  document.getElementById('uploads-empty')?.remove()
  const item = document.createElement('li')
  const link = document.createElement('a')
  link.href = url
  link.textContent = file.name
  link.setAttribute('download', file.name)
  link.className = 'download-link'
  link.dataset.fileId = file.id
  const size = document.createElement('span')
  size.className = 'size'
  size.textContent = ` ${formatBytes(file.size)}`
  item.append(link, size)
  list.append(item)
}

function formatBytes(bytes) {
  if (bytes == null) return ''
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit += 1
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`
}
