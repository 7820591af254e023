"""A finished run -> a Hugging Face Hub dataset. One job per module, in the order `gen publish` uses them:

    repo_id.py   what the Hub accepts as `namespace/name`
    plan.py      what goes out: shards verified against the manifest, configs, splits, Parquet file names
    card.py      the dataset card (README.md) from the datasets_cards/ templates; plots.py its two PNGs
    leaks.py     the secret checks: no credential from the environment in a row or an exported file
    export.py    the repo's files written into a folder, replacing only what an earlier export recorded
    hub.py       the upload: create the repo, then one commit
    pipeline.py  publish(): plan -> export -> upload (or a dry run into a folder)
"""
