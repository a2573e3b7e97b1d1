"""csv-ingest: the upload -> validate -> queue -> process -> notify flow on tusd-py.

- `csv_ingest.hooks`: the server's hooks module (`--hooks-module csv_ingest.hooks`); its
  pre-create hook refuses what cannot be a CSV file before a byte is sent.
- `csv_ingest.worker`: takes post-finish events from the server's Redis stream, reads each
  finished upload from the store (a file or an S3 object) as a stream, checks it
  (`csv_ingest.check`) and tells the application the outcome through a webhook.
"""
