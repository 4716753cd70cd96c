"""`bearrec serve`: a trained recommender behind HTTP (FastAPI + uvicorn).

The model is loaded once; requests are gathered into batches of up to `max_batch_size` users or
`max_batch_delay_ms` and decoded together by `Recommender.recommend` on one worker thread, so the
event loop never waits on the model. Modules:

- `settings`: the server's knobs (`ServeSettings`), checked before anything is loaded;
- `batcher`: the dynamic batcher (bounded queue, worker thread, no web framework);
- `model`: the served model: history resolution (ids or titles), ranked rows as `recommend` prints
  them, identity and `/info`;
- `schemas`: pydantic request / response models (the OpenAPI schema);
- `metrics` and `middleware`: Prometheus metrics, the request-size limit and per-request accounting;
- `app`: the routes and error handlers; `server`: uvicorn, model loading and graceful shutdown.

Only `settings` is imported by the CLI before the command is known to be `serve`; FastAPI,
uvicorn and prometheus_client are imported lazily.
"""
