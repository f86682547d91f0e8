"""Orchestration of batch style transfer: the only package that knows Ray, fsspec and Parquet.

Modules follow the data flow::

    cli        stylize run / grid / status (image and bench delegate to stylize/)
    jobconfig  YAML job -> frozen JobConfig (RayConfig, GridConfig); --set overrides
    sources    input and styles listed through fsspec (storage: pkg://, local, s3://, ...)
    items      WorkItem (id, output path), shards
    driver     validate -> resume/refuse/overwrite -> shards -> pool -> manifest, grid, run.json
    pool       Ray actor pool: one call in flight per actor, retries, isolation, timeouts
    worker     StyleWorker (plain class) / StyleActor: bytes -> engine -> outputs + rows
    manifest   explicit pyarrow schema, shard parts, manifest.parquet, run.json
    progress   tqdm bar or log lines;  grid  contact sheets;  status  run-folder summary
"""
