"""pgolf inspect EXPERIMENT.toml [--json]"""
from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("experiment", help="experiment TOML file")
    p.add_argument("--variant", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any key, e.g. config.optim.matrix_lr=0.02")
    p.add_argument("--smoke", action="store_true", help="shrink to the CPU smoke shape")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--bytes", action="store_true",
                   help="also pack the counted train_gpt.py: raw, minified and packed bytes of the code")


def describe(exp, variant=None) -> dict:
    from pgolf.trainers.codebundle import code_version
    from pgolf.trainers.config import config_hash
    from pgolf.trainers.model import GPT, count_parameters, flops_per_token

    cfg = exp.resolved(variant)
    import torch
    with torch.device("meta"):
        model = GPT(cfg.model)
        n = count_parameters(model)
    return {
        "experiment": exp.meta.name,
        "file": exp.path,
        "lineage": exp.lineage,
        "variant": variant or exp.meta.name,
        "config_hash": config_hash(cfg, code_version()),
        "params": n,
        "flops_per_token": flops_per_token(cfg.model, n, cfg.data.train_seq_len, model.blocks),
        "seeds": exp.meta.seeds,
        "resources": vars(exp.resources),
        "budget": vars(exp.budget),
        "config": cfg.to_dict(),
    }


def code_bytes(cfg) -> dict:
    """The counted code of a run of `cfg`, packed exactly as the end of that run packs it: readable
    trainer sources, the minified sources the file carries, and the real size of train_gpt.py."""
    import os
    import tempfile

    from pgolf.trainers.codebundle import decided_fields, payload_of, write_code_artifact
    from pgolf.trainers.posttrain import embedded_config

    with tempfile.TemporaryDirectory() as tmp:
        art = write_code_artifact(tmp, embedded_config(cfg))
        with open(os.path.join(tmp, "train_gpt.py"), "rb") as fh:
            text = fh.read()
    return {"raw_bytes": art.raw_source_bytes, "minified_bytes": art.shipped_source_bytes, "packed_bytes": len(text),
            "codec": art.codec, "decided_fields": decided_fields(payload_of(text))}


def run(args) -> int:
    from pgolf.experiment import load_experiment

    exp = load_experiment(args.experiment, overrides=args.set, smoke=args.smoke)
    info = describe(exp, args.variant)
    if args.bytes:
        info["code_bytes"] = code_bytes(exp.resolved(args.variant))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"experiment: {info['experiment']}  ({info['file']})")
    if len(info["lineage"]) > 1:
        import os
        print("extends:    " + " -> ".join(os.path.relpath(p) for p in info["lineage"]))
    print(f"variant:    {info['variant']}   variants in file: {', '.join(exp.variant_names())}")
    print(f"config_hash: {info['config_hash']}")
    print(f"params:     {info['params']:,}")
    print(f"flops/token: {info['flops_per_token']:.4g} (6N + 12*L*d*T)")
    print(f"seeds:      {info['seeds']}   resources: {info['resources']}   budget: {info['budget']}")
    if args.bytes:
        b = info["code_bytes"]
        print(f"code bytes: {b['packed_bytes']:,} packed ({b['codec']}; counted: the real size of train_gpt.py), "
              f"{b['minified_bytes']:,} minified, {b['raw_bytes']:,} raw source")
        print(f"decided:    {len(b['decided_fields'] or [])} config fields the packer decided on (a --set or env override "
              "that changes one stops the file at start: re-pack; --json lists them)")
    for section, values in info["config"].items():
        print(f"[config.{section}]")
        for k, v in values.items():
            print(f"  {k} = {v!r}")
    return 0
