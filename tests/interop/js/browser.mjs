#!/usr/bin/env node
// Uploads files through the Uppy page of `tusd-py serve --demo` in headless Chromium (Debian's,
// driven by playwright-core; no browser of Playwright's own); driven by
// tests/interop/test_browser.py.
//
// Usage: node browser.mjs --page URL [--chromium PATH] [--timeout SECONDS]
//                         [--throttle BYTES_PER_SECOND] [--screenshot PNG] FILE...
//
//   --page        the demo page, e.g. http://127.0.0.1:1080/
//   --chromium    the browser executable (default: $CHROMIUM or /usr/bin/chromium)
//   --timeout     give up waiting for the uploads after this many seconds (default 120)
//   --throttle    limit the browser's upload rate (DevTools network emulation), so a test can
//                 act while an upload is still under way
//   --screenshot  save a picture of the page at the end
//
// The files are added on the Dashboard's file input, as a person choosing them would, and the
// Dashboard's Upload button starts them. The page records Uppy's events in window.demoEvents;
// this script passes each new one on as it comes.
//
// stdout (one JSON object at the end):
//   {"status": "success"|"error"|"timeout", "events": [...], "uploads": [{name, url, size}],
//    "links": [{text, href, download}], "consoleErrors": [...], "pageErrors": [...]}
//   (status "success": every file reported upload-success; "error": one reported upload-error)
// stderr: one JSON object per line: {"event": "ready"|"started"|"demo"|"done"|"error", ...};
//   "demo" carries one page event ({type, id, name, bytesUploaded, bytesTotal, url}). On a
//   failure of the script itself: {"event":"error","message":...} and exit status 1.

import * as fs from 'node:fs'
import * as path from 'node:path'
import { parseArgs } from 'node:util'
import { chromium } from 'playwright-core'

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox', // runs as root in CI, where Chromium's sandbox cannot start
  '--disable-gpu',
  '--disable-background-networking', // no requests of the browser's own: only the page's
  '--disable-component-update',
  '--no-first-run',
]
const FILE_INPUT = 'input.uppy-Dashboard-input[type="file"]:not([webkitdirectory])'
const UPLOAD_BUTTON = 'button.uppy-StatusBar-actionBtn--upload'
const POLL_MS = 100

function emit(event) {
  process.stderr.write(`${JSON.stringify(event)}\n`)
}

function options() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      page: { type: 'string' },
      chromium: { type: 'string' },
      timeout: { type: 'string', default: '120' },
      throttle: { type: 'string' },
      screenshot: { type: 'string' },
    },
  })
  if (!values.page) throw new Error('--page is required')
  if (positionals.length === 0) throw new Error('name at least one file to upload')
  return {
    page: values.page,
    chromium: values.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium',
    timeoutMs: Number(values.timeout) * 1000,
    throttle: values.throttle == null ? null : Number(values.throttle),
    screenshot: values.screenshot ?? null,
    files: positionals.map((file) => path.resolve(file)),
  }
}

async function run(opts) {
  for (const file of opts.files) fs.accessSync(file, fs.constants.R_OK)
  const browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
  })
  try {
    const context = await browser.newContext()
    const page = await context.newPage()
    const consoleErrors = []
    const pageErrors = []
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(message.text())
    })
    page.on('pageerror', (error) => pageErrors.push(String(error?.stack ?? error)))

    await page.goto(opts.page, { waitUntil: 'load' })
    await page.waitForSelector('.uppy-Dashboard', { timeout: 15000 })
    emit({ event: 'ready', url: page.url() })

    if (opts.throttle != null) {
      // DevTools' network emulation throttles request bodies too: the upload stays under
      // way long enough for a test to restart the server in the middle of it.
      const cdp = await context.newCDPSession(page)
      await cdp.send('Network.enable')
      await cdp.send('Network.emulateNetworkConditions', {
        offline: false,
        latency: 0,
        downloadThroughput: -1,
        uploadThroughput: opts.throttle,
      })
    }

    await page.locator(FILE_INPUT).first().setInputFiles(opts.files)
    await page.waitForFunction(
      (count) => document.querySelectorAll('.uppy-Dashboard-Item').length === count,
      opts.files.length,
      { timeout: 15000 },
    )
    await page.locator(UPLOAD_BUTTON).click()
    emit({ event: 'started', files: opts.files.length })

    const events = []
    const succeeded = new Set()
    let status = 'timeout'
    const deadline = Date.now() + opts.timeoutMs
    while (Date.now() < deadline) {
      const fresh = await page.evaluate((seen) => window.demoEvents.slice(seen), events.length)
      for (const event of fresh) {
        events.push(event)
        emit({ event: 'demo', ...event })
        if (event.type === 'success') succeeded.add(event.id)
        if (event.type === 'error') status = 'error'
      }
      if (status === 'error') break
      if (succeeded.size === opts.files.length) {
        status = 'success'
        break
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS))
    }

    const links = await page.$$eval('#uploads a', (anchors) =>
      anchors.map((a) => ({
        text: a.textContent,
        href: a.href,
        download: a.getAttribute('download'),
      })),
    )
    const uploads = events
      .filter((event) => event.type === 'success')
      .map((event) => ({ name: event.name, url: event.url, size: event.bytesTotal }))
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true })
    emit({ event: 'done', status })
    return { status, events, uploads, links, consoleErrors, pageErrors }
  } finally {
    await browser.close()
  }
}

try {
  const result = await run(options())
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0))
} catch (err) {
  emit({ event: 'error', message: String(err?.stack ?? err) })
  // Give stderr a moment to flush, then leave even if the browser is still closing.
  setTimeout(() => process.exit(1), 50)
}
