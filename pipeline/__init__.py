"""Orchestration of batch style transfer: the only package that knows Ray, fsspec and Parquet.

Modules follow the data flow::

    cli        stylize run / grid / status (image and bench delegate to stylize/)
    jobconfig  YAML job -> frozen JobConfig (RayConfig, GridConfig); --set overrides
    sources    input and styles listed through fsspec (storage: pkg://, local, s3://, ...)
    items      WorkItem (id, output path), shards
    driver     validate -> resume/refuse/overwrite -> shards -> scheduler -> manifest, run.json
    scheduler  the policy, no Ray: what goes where; what a death, a timeout, a bad start means
    raypool    its executor on Ray actors;  inline  its executor in this process (no Ray)
    worker     StyleWorker (plain class, no Ray): bytes -> engine -> outputs + rows
    storage    every read/write/list, retried with backoff;  redact  secrets out of messages
    errors     exit codes and the exceptions behind them
    manifest   explicit pyarrow schema, shard parts, manifest.parquet, run.json
    runfolder  the names of an output folder's own files and folders (RunFolder)
    progress   tqdm bar or log lines;  grid  contact sheets;  status  run-folder summary
"""
