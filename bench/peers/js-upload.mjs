// Upload one file with tus-js-client (Node), print seconds.
// usage: node js-upload.mjs ENDPOINT FILE CHUNK_SIZE
import fs from "node:fs";
import * as tus from "tus-js-client";

const [endpoint, file, chunkSize] = process.argv.slice(2);
const size = fs.statSync(file).size;
const started = process.hrtime.bigint();
await new Promise((resolve, reject) => {
  const upload = new tus.Upload(fs.createReadStream(file), {
    endpoint,
    uploadSize: size,
    chunkSize: Number(chunkSize) || Infinity,
    retryDelays: [0, 500, 1000],
    onError: reject,
    onSuccess: () => resolve(upload.url),
  });
  upload.start();
});
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log(JSON.stringify({ seconds, bytes: size }));
