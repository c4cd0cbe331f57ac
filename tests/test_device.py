"""The device is checked for real (core/device.py): a GPU torch cannot compute on (Kaggle's cu128 torch on a P100,
a driver too old for the build, CUDA_VISIBLE_DEVICES hiding all) is named in one line; `auto` falls back to the CPU
saying so, `cuda` stops with the cause and the fix. This machine has no GPU, so the GPU's answers are test doubles
of torch.cuda's own calls; the kernel's fallback writes the same submission as on the CPU."""
import pytest
import torch

from pipeline.core import device
from pipeline.core.errors import UserError
from pipeline.kernel.accelerators import ACCELERATORS, KAGGLE_TORCH_ARCHS, accelerator
from pipeline.kernel.runtime import UTILISATION, ModelCost, project

from conftest import KERNEL_TRICKS, PYPATH, assert_one_line_error, cli, tiny_overrides


def fake_gpu(monkeypatch, capability=(6, 0), name="Tesla P100-PCIE-16GB", archs=KAGGLE_TORCH_ARCHS, first_op=None):
    """torch.cuda as on a machine with this GPU and a torch built for archs; first_op: the error its first
    operation raises."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
    real_ones = torch.ones

    def ones(*a, device=None, **kw):
        if str(device).startswith("cuda"):
            raise first_op or RuntimeError("no GPU behind this double")
        return real_ones(*a, device=device, **kw)

    monkeypatch.setattr(torch, "ones", ones)


@pytest.mark.parametrize("capability, archs, ok", [
    ((6, 0), KAGGLE_TORCH_ARCHS, False),  # the P100 on Kaggle's torch
    ((7, 5), KAGGLE_TORCH_ARCHS, True),  # the T4
    ((8, 9), ("sm_80", "sm_86"), True),  # the L4 runs sm_86 cubins (same major, lower minor)
    ((8, 0), ("sm_86",), False),  # not a higher minor
    ((9, 0), ("sm_80", "compute_80"), True),  # PTX compiles forward
    ((6, 1), ("sm_70",), False),
])
def test_arch_supported(capability, archs, ok):
    assert device.arch_supported(capability, list(archs)) is ok


def test_a_p100_on_kaggles_torch_is_unusable_and_named(monkeypatch):
    fake_gpu(monkeypatch)
    check = device.cuda_check()
    assert not check.usable and "Tesla P100-PCIE-16GB (sm_60) is not among this torch" in check.why
    assert "T4 or L4" in check.fix
    lines = []
    assert device.pick_device("auto", log=lines.append) == "cpu"
    assert len(lines) == 1 and lines[0].startswith("WARNING: a GPU is here but unusable: Tesla P100"), lines
    with pytest.raises(UserError, match=r"device 'cuda': Tesla P100-PCIE-16GB \(sm_60\) is not among") as e:
        device.pick_device("cuda")
    assert "\n" not in str(e.value)


def test_a_first_operation_that_fails_is_unusable(monkeypatch):
    fake_gpu(monkeypatch, capability=(7, 5), name="Tesla T4",
             first_op=RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore"))
    check = device.cuda_check()
    assert not check.usable and check.why == ("Tesla T4 (sm_75) failed its first operation: CUDA error: no kernel "
                                              "image is available for execution on the device")


def test_a_usable_gpu_and_its_autocast_dtype(monkeypatch):
    fake_gpu(monkeypatch, capability=(7, 5), name="Tesla T4")
    monkeypatch.setattr(torch, "ones", lambda *a, **kw: torch.zeros(8))
    assert device.cuda_check().usable and device.pick_device("auto") == "cuda"
    assert device.pick_device("cuda:0") == "cuda:0"
    assert device.amp_dtype("cuda") is torch.float16  # the T4: no fast bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    assert device.amp_dtype("cuda") is torch.bfloat16


def test_no_gpu_causes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device.cuda_check().why == "CUDA_VISIBLE_DEVICES='' hides every GPU"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    def old_driver():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12020). Please update")

    monkeypatch.setattr(torch.cuda, "init", old_driver)
    check = device.cuda_check()
    assert check.why == "The NVIDIA driver on your system is too old (found version 12020)"
    assert check.fix.startswith("update the NVIDIA driver to one for CUDA")
    lines = []
    monkeypatch.setattr(device, "nvidia_gpu_present", lambda: True)  # the driver is loaded, torch cannot use it
    assert device.pick_device("auto", log=lines.append) == "cpu"
    assert len(lines) == 1 and "too old" in lines[0] and "running on the CPU" in lines[0]
    with pytest.raises(UserError, match="device 'cpu0': use auto, cuda, cuda:N or cpu"):
        device.pick_device("cpu0")


@pytest.mark.pypi
def test_kernel_on_an_unusable_gpu_falls_back_in_one_line(kernel_package, trained, monkeypatch, tmp_path):
    """The kernel (in this process, torch.cuda doubled as a P100 on Kaggle's torch) runs on the CPU, says why in one
    line, and writes the offline check's submission byte for byte."""
    from pipeline.kernel.infer import run

    work, pkg = kernel_package
    tiny, runs = trained
    p = cli("ensemble", runs / "a.yaml", runs / "b.yaml", "--out", "cpu-ref", *KERNEL_TRICKS,
            *tiny_overrides(tiny, runs, "epochs=1"), cwd=work, env=PYPATH)
    assert p.returncode == 0, p.stderr
    fake_gpu(monkeypatch)
    lines = []
    run(pkg / "models", tiny / "data", tmp_path / "submission.csv", log=lines.append)
    said = [x for x in lines if "Tesla P100" in x]
    assert len(said) == 1 and said[0].startswith("kernel: 2 model(s) on the CPU (Tesla P100-PCIE-16GB (sm_60) is "
                                                 "not among this torch"), lines
    assert (tmp_path / "submission.csv").read_bytes() == (work / "submissions" / "cpu-ref.csv").read_bytes()


def test_train_device_cuda_without_a_gpu_is_one_line(tiny_data, tmp_path):
    (tmp_path / "c.yaml").write_text("# test\n")
    p = cli("train", tmp_path / "c.yaml", *tiny_overrides(tiny_data, tmp_path, "device=cuda"))
    assert p.returncode == 2
    assert_one_line_error(p, "device 'cuda': ", "use device=cpu")


def test_accelerators_and_the_p100_refusal():
    assert accelerator("T4") == accelerator("nvidiateslat4") == "T4" and accelerator("none") == "none"
    with pytest.raises(UserError, match=r"no sm_60 kernels .* give --accelerator P100 twice"):
        accelerator("P100")
    assert accelerator("NvidiaTeslaP100", p100_confirmed=True) == "P100"
    with pytest.raises(UserError, match="--accelerator V100: use one of T4, L4, P100, none"):
        accelerator("V100")
    assert accelerator("L4") == "L4"  # sm_89 runs the build's sm_86 kernels
    archs = list(KAGGLE_TORCH_ARCHS)
    assert [k for k, a in ACCELERATORS.items()
            if a.sm and not device.arch_supported((int(a.sm[3:-1]), int(a.sm[-1])), archs)] == ["P100"]


def test_projection_arithmetic():
    models = [ModelCost("m1", 512, 100.0, 2), ModelCost("m2", 384, 25.0, 2)]
    p = project(models, "T4", 5000, gallery=44703, dim=1024, query_views=1, limit_hours=9, decode_s=0.01)
    rate = 65e12 * UTILISATION
    assert p.model_s == pytest.approx((100e9 * 2 + 25e9 * 2) * 5000 / rate)
    assert p.decode_s == pytest.approx(0.01 * 5000 * 2 / 4)  # each model reads each photo; 4 cores
    assert p.rank_s == pytest.approx(2 * 5000 * 44703 * 1024 / (8.1e12 * UTILISATION))
    assert p.total_s == pytest.approx(max(p.model_s, p.decode_s) + p.rank_s)
    assert not any(x.startswith("WARNING") for x in p.lines())
    slow = project(models, "T4", 5000 * 100, 44703, 1024, 1, 9, 0.01)
    assert slow.lines()[-1].startswith("WARNING: the projection is above half the limit; bounded by the models'")
