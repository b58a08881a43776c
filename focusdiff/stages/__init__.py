"""The stages layer: the one place that knows the whole parameter file, tracking, the
registry and the domain packages together.

A stage takes the typed `Params` (focusdiff.config), opens its MLflow run, calls the
domain code with that code's own typed section, and records what it produced. The
domain packages (shapes, data, model, judge, train, eval, registry) never import this
layer, the parameter file's hub, the CLI or the flows; the CLI (`focusdiff ...`, which
`dvc.yaml` runs) and the Prefect flows only call stages. tests/unit/test_layering.py holds
the allowed dependencies and fails on any import against them.
"""
