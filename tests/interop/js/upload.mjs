#!/usr/bin/env node
// Uploads one file with tus-js-client's Node.js API; driven by tests/interop/test_tus_js_client.py.
//
// Usage: node upload.mjs '<json options>'     (or: node upload.mjs --config options.json)
//
// Options (JSON):
//   file                 path of the file to upload (required)
//   endpoint             creation URL, e.g. http://127.0.0.1:1080/files/
//   uploadUrl            resume this upload URL instead of looking anything up
//   chunkSize            bytes per PATCH (default: whole file)
//   parallelUploads      number of partial uploads (concatenation extension), default 1
//   metadata             object of metadata key -> string value
//   retryDelays          array of milliseconds (default [0, 200, 500, 1000, 2000]); null = no retries
//   uploadDataDuringCreation  send the first chunk with the POST (creation-with-upload)
//   urlStorage           path of a JSON file used as tus-js-client's FileUrlStorage
//   resume               true: look the file up in urlStorage and resume that upload; it is an
//                        error if nothing is stored for this file
//   stopAfter            abort the upload (client side, between chunks) as soon as the server
//                        has acknowledged at least this many bytes; prints status "stopped"
//   holdAtOffset         the first PATCH whose Upload-Offset >= holdAtOffset sends holdBytes
//                        (default half of its body) and then stalls without closing the
//                        request, so a test can kill the server (or this process) mid-PATCH.
//                        Emits {"event":"holding",...} on stderr when the bytes were handed over.
//   holdBytes            see holdAtOffset
//
// stdout (one JSON object, on success or stop):
//   {"status": "success"|"stopped", "url": ..., "offset": ..., "size": ...,
//    "resumedFrom": url|null, "requests": [{method, url, status, uploadOffset, responseOffset}...]}
// stderr: one JSON object per line for events ({"event": "created"|"chunk"|"holding"|
//   "response"|"request-error"|"retry"|...}); on failure {"event":"error","message":...} and
//   the exit status is 1.

import * as fs from 'node:fs'
import { Transform } from 'node:stream'
import { DefaultHttpStack, FileUrlStorage, Upload } from 'tus-js-client'

function emit(event) {
  process.stderr.write(`${JSON.stringify(event)}\n`)
}

function fail(message, extra = {}) {
  emit({ event: 'error', message: String(message), ...extra })
  process.exitCode = 1
  // Give stderr a moment to flush, then leave even if sockets are still open.
  setTimeout(() => process.exit(1), 50)
}

function parseArgs(argv) {
  if (argv.length === 2 && argv[0] === '--config') {
    return JSON.parse(fs.readFileSync(argv[1], 'utf8'))
  }
  if (argv.length === 1) {
    return JSON.parse(argv[0])
  }
  throw new Error("usage: node upload.mjs '<json options>' | --config FILE")
}

// Wraps the default Node.js HTTP stack: logs every request/response as events and can stall
// one PATCH half way through its body.
class RecordingHttpStack {
  constructor(opts, log) {
    this._inner = new DefaultHttpStack()
    this._opts = opts
    this._log = log
    this._held = false
  }

  createRequest(method, url) {
    return new RecordingRequest(this, this._inner.createRequest(method, url))
  }

  getName() {
    return 'RecordingHttpStack'
  }

  _shouldHold(req) {
    if (this._held || this._opts.holdAtOffset == null) return false
    const method = req.getMethod()
    const override = req.getHeader('X-HTTP-Method-Override')
    if (method !== 'PATCH' && override !== 'PATCH') return false
    const offset = Number(req.getHeader('Upload-Offset'))
    return Number.isFinite(offset) && offset >= this._opts.holdAtOffset
  }
}

class RecordingRequest {
  constructor(stack, inner) {
    this._stack = stack
    this._inner = inner
  }

  getMethod() {
    return this._inner.getMethod()
  }

  getURL() {
    return this._inner.getURL()
  }

  setHeader(name, value) {
    this._inner.setHeader(name, value)
  }

  getHeader(name) {
    return this._inner.getHeader(name)
  }

  setProgressHandler(handler) {
    this._inner.setProgressHandler(handler)
  }

  abort() {
    return this._inner.abort()
  }

  getUnderlyingObject() {
    return this._inner.getUnderlyingObject()
  }

  async send(body = null) {
    const method = this.getMethod()
    const url = this.getURL()
    const uploadOffset = this.getHeader('Upload-Offset') ?? null
    let sendBody = body
    if (body != null && this._stack._shouldHold(this)) {
      this._stack._held = true
      sendBody = this._stallingBody(body, Number(uploadOffset))
    }
    try {
      const res = await this._inner.send(sendBody)
      const entry = {
        method,
        url,
        status: res.getStatus(),
        uploadOffset: uploadOffset == null ? null : Number(uploadOffset),
        responseOffset:
          res.getHeader('Upload-Offset') == null ? null : Number(res.getHeader('Upload-Offset')),
        uploadConcat: this.getHeader('Upload-Concat') ?? null,
        bodySize: body?.size ?? null,
      }
      this._stack._log.push(entry)
      emit({ event: 'response', ...entry })
      return res
    } catch (err) {
      emit({ event: 'request-error', method, url, uploadOffset, message: String(err?.message ?? err) })
      throw err
    }
  }

  // Passes the first holdBytes bytes of `body` on, then never completes: the request stays
  // open with a partial body until the connection dies.
  _stallingBody(body, offset) {
    const size = Number(body.size)
    const holdBytes = this._stack._opts.holdBytes ?? Math.floor(size / 2)
    let passed = 0
    let stalled = false
    const stall = new Transform({
      transform(chunk, _enc, callback) {
        if (stalled) return // never call back: backpressure stops the source
        const room = holdBytes - passed
        if (chunk.length < room) {
          passed += chunk.length
          callback(null, chunk)
          return
        }
        stalled = true
        passed += room
        this.push(chunk.subarray(0, room))
        // Let the bytes reach the socket before announcing the stall.
        setTimeout(() => emit({ event: 'holding', offset, sent: passed, bodySize: size }), 100)
      },
    })
    stall.size = body.size
    body.pipe(stall)
    return stall
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  if (!opts.file) throw new Error('option "file" is required')
  if (!opts.endpoint && !opts.uploadUrl) throw new Error('need "endpoint" or "uploadUrl"')

  const requests = []
  const httpStack = new RecordingHttpStack(opts, requests)
  const size = fs.statSync(opts.file).size
  const file = fs.createReadStream(opts.file)

  let upload = null
  let finished = false
  let resumedFrom = null

  const done = (status, offset) => {
    if (finished) return
    finished = true
    const result = {
      status,
      url: upload.url,
      offset,
      size,
      resumedFrom,
      requests,
    }
    process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0))
  }

  const options = {
    endpoint: opts.endpoint ?? null,
    uploadUrl: opts.uploadUrl ?? null,
    metadata: opts.metadata ?? {},
    retryDelays: opts.retryDelays === undefined ? [0, 200, 500, 1000, 2000] : opts.retryDelays,
    parallelUploads: opts.parallelUploads ?? 1,
    uploadDataDuringCreation: Boolean(opts.uploadDataDuringCreation),
    removeFingerprintOnSuccess: false,
    httpStack,
    onError(err) {
      if (finished) return
      finished = true
      const res = err?.originalResponse
      fail(err?.message ?? err, {
        status: res ? res.getStatus() : null,
        body: res ? res.getBody() : null,
        requests,
      })
    },
    onSuccess() {
      done('success', size)
    },
    onChunkComplete(chunkSize, bytesAccepted, bytesTotal) {
      emit({ event: 'chunk', chunkSize, offset: bytesAccepted, total: bytesTotal })
      if (
        opts.stopAfter != null &&
        (opts.parallelUploads ?? 1) <= 1 &&
        bytesAccepted >= opts.stopAfter &&
        bytesAccepted < bytesTotal
      ) {
        upload.abort(false).then(() => done('stopped', bytesAccepted))
      }
    },
    onUploadUrlAvailable() {
      emit({ event: 'url', url: upload?.url ?? null })
    },
    onShouldRetry(err, retryAttempt) {
      const status = err?.originalResponse ? err.originalResponse.getStatus() : 0
      const retry = !(status >= 400 && status < 500) || status === 409 || status === 423
      emit({ event: 'retry', attempt: retryAttempt, status, retry, message: String(err?.message) })
      return retry
    },
  }
  if (opts.chunkSize != null) options.chunkSize = Number(opts.chunkSize)
  if (opts.urlStorage) options.urlStorage = new FileUrlStorage(opts.urlStorage)

  upload = new Upload(file, options)

  if (opts.resume) {
    if (!opts.urlStorage) throw new Error('"resume" needs "urlStorage"')
    const previous = await upload.findPreviousUploads()
    if (previous.length === 0) throw new Error('resume: no previous upload stored for this file')
    previous.sort((a, b) => Date.parse(a.creationTime) - Date.parse(b.creationTime))
    const last = previous[previous.length - 1]
    resumedFrom = last.uploadUrl ?? last.parallelUploadUrls ?? null
    emit({ event: 'resuming', from: resumedFrom })
    upload.resumeFromPreviousUpload(last)
  }
  upload.start()
}

main().catch((err) => fail(err?.stack ?? err))
