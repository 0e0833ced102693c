// Upload one file with tus-js-client, resuming through its URL storage on disk.
// Usage: node upload.mjs ENDPOINT TOKEN FILE URL_STORAGE CHUNK_SIZE
// Prints "resuming URL" when it resumes, "progress SENT TOTAL" per chunk, "done URL" at the end.
import fs from "node:fs";
import tus from "tus-js-client";

const [endpoint, token, path, storagePath, chunkSize] = process.argv.slice(2);
const upload = new tus.Upload(fs.createReadStream(path), {
  endpoint,
  headers: { Authorization: `Bearer ${token}` },
  chunkSize: Number(chunkSize),
  uploadSize: fs.statSync(path).size,
  metadata: { filename: "js.bin", filetype: "application/octet-stream" },
  urlStorage: new tus.FileUrlStorage(storagePath),
  // The fingerprint of a stream is its path, so a new process finds its upload again.
  fingerprint: async () => `ephemera-test:${path}`,
  retryDelays: [0, 500, 1000],
  onUploadUrlAvailable: () => console.log(`url ${upload.url}`),
  onProgress: (sent, total) => console.log(`progress ${sent} ${total}`),
  onSuccess: () => console.log(`done ${upload.url}`),
  onError: (error) => {
    console.error(`error ${error}`);
    process.exit(1);
  },
});
const previous = await upload.findPreviousUploads();
if (previous.length > 0) {
  console.log(`resuming ${previous[0].uploadUrl}`);
  upload.resumeFromPreviousUpload(previous[0]);
}
upload.start();
