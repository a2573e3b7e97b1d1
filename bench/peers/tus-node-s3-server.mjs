// @tus/server with @tus/s3-store, for side-by-side benchmarks.
// usage: node tus-node-s3-server.mjs PORT BUCKET ENDPOINT_URL
// Keys from S3_ACCESS_KEY / S3_SECRET_KEY, region from S3_REGION (default us-east-1).
// The bucket must exist. @tus/s3-store spools each part to a file in os.tmpdir() before it
// sends it: set TMPDIR to put those files on tmpfs.
import http from "node:http";
import { Server } from "@tus/server";
import { S3Store } from "@tus/s3-store";

const [port, bucket, endpoint] = process.argv.slice(2);
const datastore = new S3Store({
  partSize: 8 * 1024 * 1024,
  s3ClientConfig: {
    bucket,
    region: process.env.S3_REGION || "us-east-1",
    endpoint,
    forcePathStyle: true,
    credentials: {
      accessKeyId: process.env.S3_ACCESS_KEY,
      secretAccessKey: process.env.S3_SECRET_KEY,
    },
    // RGW refuses the SDK's default CRC32 checksums on every request
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  },
});
const tus = new Server({ path: "/files", datastore });
http.createServer((req, res) => tus.handle(req, res)).listen(Number(port), "127.0.0.1", () => {
  console.log(`listening on ${port}`);
});
