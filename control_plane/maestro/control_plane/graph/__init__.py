"""GraphService: agent graphs from YAML recipes, run durably over a JSON state.

`recipe` (the YAML format), `compiled`, `expressions`: recipes. `records` (the domain's typed
values), `steps`, `gates` and `runtime` (executing runs), `policy`, `tools`, `model_calls`,
`blobs`: the runtime and what it calls. `store`, `stored_json`, `schema`: the run store and its
format. `service` (the domain API), `follow` and `interaction` (streams of a run), `hub`
(wake-ups in a replica). `servicer` and `convert`: the gRPC face (`convert` alone maps the API's
messages and names to the domain's). `assembly` puts them together in a control-plane process.
"""
