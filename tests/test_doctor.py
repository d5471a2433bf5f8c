"""``lightning-accel doctor``: facts of made-up machines judged by the run's own rules, the
detection of cluster environments and CPU flags, and the command's exits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import HARDWARE_PROFILES

from lightning_accel import machine
from lightning_accel.cli import doctor as doctor_cli
from lightning_accel.cli.doctor import diagnose
from lightning_accel.cli.main import main
from lightning_accel.hardware import auto_accelerator
from lightning_accel.machine import (
    CpuFacts,
    CudaDevice,
    CudaFacts,
    MachineFacts,
    XlaFacts,
    gather_cluster,
    gather_cpu,
)
from lightning_accel.xla.runtime import INSTALL as XLA_INSTALL

VERSIONS = {"python": "3.11.7", "torch": "2.9.0+cu128", "lightning": "2.6.6", "torch_xla": None}
CPU = CpuFacts(model="Xeon", cores=16, features=("avx2", "avx512f"), torch_capability="AVX512")
H100 = MachineFacts(
    versions=VERSIONS,
    cpu=CPU,
    cuda=CudaFacts(
        build="12.8",
        driver="570.86.15",
        pci_gpus=8,
        devices=tuple(CudaDevice(i, "NVIDIA H100 80GB HBM3", (9, 0), 79.2) for i in range(8)),
        cudnn="9.10.2",
        nccl="2.27.3",
    ),
)
CPU_ONLY = MachineFacts(versions={**VERSIONS, "torch": "2.9.0+cpu"}, cpu=CPU)
TPU_HOST = MachineFacts(
    versions={**VERSIONS, "torch": "2.9.0", "torch_xla": "2.9.0"},
    cpu=CPU,
    xla=XlaFacts(installed=True, pjrt_device="", tpu_chips=4, tpu_devices=4),
)
XLA_PROFILES = ("tpu", "tpu_spmd", "xla_cpu", "xla_cpu_spmd")


def runs(facts: MachineFacts) -> dict[str, bool]:
    return {verdict.name: verdict.runs for verdict in diagnose(facts).profiles}


def test_eight_h100s_run_ddp_and_fsdp2_and_auto_picks_cuda_in_bf16() -> None:
    report = diagnose(H100)
    assert report.verdict("ddp").resolved == "cuda x 8, strategy accel_ddp"
    assert report.verdict("fsdp2").resolved == "cuda x 8, strategy fsdp2"
    assert (report.auto.accelerator, report.auto.devices) == ("cuda", 8)
    assert report.auto.precision == "bf16-mixed"
    assert "sm_90" in report.auto.reason
    assert [p.need for p in report.problems] == ["torch_xla"], "only the XLA extra is missing"


def test_gpus_without_nccl_cannot_run_ddp_but_one_gpu_can() -> None:
    report = diagnose(replace(H100, cuda=replace(H100.cuda, nccl=None)))
    assert not report.verdict("ddp").runs
    assert report.verdict("ddp").reason == "NCCL is not available: GPUs cannot communicate"
    assert report.verdict("auto").resolved == "cuda x 1, strategy auto"


def test_old_gpus_get_fp16_from_auto() -> None:
    v100 = replace(H100.cuda, devices=(CudaDevice(0, "Tesla V100", (7, 0), 16.0),))
    report = diagnose(replace(H100, cuda=v100))
    assert report.auto.precision == "16-mixed"


def test_doctor_says_what_fp8_auto_does_on_the_device_auto_picks() -> None:
    assert diagnose(H100).auto.float8.startswith("timed against bf16 where the layers are wide")
    a100 = replace(H100.cuda, devices=(CudaDevice(0, "NVIDIA A100", (8, 0), 80.0),))
    assert diagnose(replace(H100, cuda=a100)).auto.float8 == (
        "off without a trial: float8 needs a GPU with float8 tensor cores (compute "
        "capability 8.9 or newer) and this GPU is sm_80"
    )
    assert diagnose(CPU_ONLY).auto.float8.endswith("this run's device (cpu) has none")


def test_a_cpu_only_machine_without_torch_xla_runs_no_xla_profile() -> None:
    report = diagnose(CPU_ONLY)
    assert runs(CPU_ONLY) == {
        "auto": True,
        "cpu": True,
        "ddp": False,
        "ddp_cpu": True,
        "fsdp2": False,
        "fsdp2_cpu": True,
        **dict.fromkeys(("tp", "fsdp2_tp", "hsdp"), False),
        **dict.fromkeys(("tp_cpu", "fsdp2_tp_cpu", "hsdp_cpu"), True),
        **dict.fromkeys(XLA_PROFILES, False),
    }
    for name in XLA_PROFILES:
        assert XLA_INSTALL in report.verdict(name).sentence()
    assert {p.need: p.fix for p in report.problems}["torch_xla"] == XLA_INSTALL
    ddp = report.verdict("ddp").sentence()
    assert ddp.startswith("hardware=ddp cannot run here: hardware.accelerator='cuda' is not")
    assert ddp.endswith("here, use its CPU twin ddp_cpu.")
    for name in ("tp", "fsdp2_tp", "hsdp"):  # each its own twin, not DDP's and FSDP2's
        assert report.verdict(name).sentence().endswith(f"here, use its CPU twin {name}_cpu.")
    assert (report.auto.accelerator, report.auto.precision) == ("cpu", "32-true")


def test_a_cuda_build_without_a_driver_asks_for_the_driver() -> None:
    facts = MachineFacts(versions=VERSIONS, cpu=CPU, cuda=CudaFacts(build="12.8", pci_gpus=2))
    (cuda,) = [p for p in diagnose(facts).problems if p.need == "cuda"]
    assert cuda.what == "2 NVIDIA GPU(s) on the PCI bus, but no NVIDIA driver is loaded"
    assert cuda.fix.startswith("install the NVIDIA driver for CUDA 12.8")


def test_a_tpu_host_with_torch_xla_runs_the_tpu_profiles_in_bf16() -> None:
    report = diagnose(TPU_HOST)
    assert report.verdict("tpu").resolved == "pjrt x 4, strategy xla_processes"
    assert report.verdict("tpu_spmd").resolved == "pjrt x 4, strategy xla_spmd"
    assert report.verdict("xla_cpu_spmd").runs
    assert (report.auto.accelerator, report.auto.devices) == ("tpu", 4)
    assert (report.auto.precision, report.auto.reason) == ("bf16-mixed", "TPUs compute in bf16")
    assert not report.verdict("ddp").runs


def test_torch_xla_without_tpus_runs_only_the_xla_cpu_profiles() -> None:
    facts = MachineFacts(
        versions={**VERSIONS, "torch_xla": "2.9.0"},
        cpu=CPU,
        xla=XlaFacts(installed=True, pjrt_device="", tpu_chips=0, tpu_devices=0),
    )
    verdicts = runs(facts)
    assert [verdicts[name] for name in XLA_PROFILES] == [False, False, True, True]
    assert diagnose(facts).verdict("tpu").fix.startswith("use a Cloud TPU VM")


def test_torch_xla_built_for_another_torch_is_a_problem() -> None:
    facts = MachineFacts(
        versions={**VERSIONS, "torch": "2.10.0", "torch_xla": "2.9.0"},
        cpu=CPU,
        xla=XlaFacts(installed=True, tpu_chips=4, tpu_devices=4),
    )
    report = diagnose(facts)
    assert not report.verdict("tpu").runs
    assert report.verdict("tpu").fix == "pip install 'torch==2.9.*'"


def test_slurm_is_detected_from_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    for key, value in {"SLURM_NTASKS": "16", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    cluster = gather_cluster()
    assert cluster.kind == "slurm"
    assert cluster.details["SLURM_JOB_ID"] == "4242" and cluster.details["SLURM_NNODES"] == "2"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert gather_cluster().kind == "none", "Lightning ignores interactive SLURM sessions"


def test_torchrun_is_detected_from_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    for key, value in {"TORCHELASTIC_RUN_ID": "r1", "WORLD_SIZE": "8", "RANK": "3"}.items():
        monkeypatch.setenv(key, value)
    cluster = gather_cluster()
    assert cluster.kind == "torchrun"
    assert (cluster.details["WORLD_SIZE"], cluster.details["RANK"]) == ("8", "3")


def test_no_cluster_without_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert gather_cluster().kind == "none"


SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_amx_bf16_is_read_from_cpuinfo_and_auto_picks_bf16(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(SAPPHIRE_RAPIDS)
    cpu = gather_cpu(cpuinfo)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.features == ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    report = diagnose(MachineFacts(versions=VERSIONS, cpu=cpu))
    assert report.auto.precision == "bf16-mixed"
    assert report.auto.reason == "the CPU has bf16 matrix units: amx_bf16"


def test_a_cpu_without_bf16_units_gets_fp32(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Old\nflags\t\t: fpu sse2 avx2\n")
    assert gather_cpu(cpuinfo).features == ("avx2",)
    assert diagnose(MachineFacts(versions=VERSIONS, cpu=gather_cpu(cpuinfo))).auto.precision == (
        "32-true"
    )


def test_cudnn_versions_read_as_text() -> None:
    assert machine.cudnn_version(91002) == "9.10.2"
    assert machine.cudnn_version(8907) == "8.9.7"


def test_nvidia_gpus_are_counted_on_the_pci_bus(tmp_path: Path) -> None:
    for name, vendor, kind in [
        ("0000:01:00.0", "0x10de", "0x030200"),  # an NVIDIA 3D controller
        ("0000:01:00.1", "0x10de", "0x040300"),  # its audio function
        ("0000:02:00.0", "0x1ae0", "0x030000"),  # another vendor's display
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "class").write_text(kind + "\n")
    assert machine.nvidia_pci_gpus(tmp_path) == 1


def doctor(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``lightning-accel doctor ARGS`` in this process: exit code, stdout, stderr."""
    try:
        code = main(["doctor", *args])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_holds_the_versions_and_the_verdicts(capsys: pytest.CaptureFixture) -> None:
    import lightning
    import torch

    code, out, _ = doctor(["--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["lightning"] == lightning.__version__
    assert report["auto"]["accelerator"] == auto_accelerator()
    assert {p["name"]: p["runs"] for p in report["profiles"]}["cpu"] is True
    assert report["cpu"]["cores"] >= 1


def test_a_profile_that_runs_here_exits_0(capsys: pytest.CaptureFixture) -> None:
    code, out, err = doctor(["hardware=cpu"], capsys)
    assert code == 0
    assert "Hardware profiles" in out and err == ""


def test_a_profile_that_cannot_run_here_exits_1_with_a_sentence(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_cli, "gather", lambda: CPU_ONLY)
    code, out, err = doctor(["--json", "hardware=cpu,ddp"], capsys)
    assert code == 1
    assert json.loads(out)["checked"] == ["cpu", "ddp"]
    (line,) = err.strip().splitlines()
    assert line.startswith(
        "lightning-accel: error: hardware=ddp cannot run here: "
        "hardware.accelerator='cuda' is not available on this machine; fix: "
    )
    assert line.endswith(".")


def test_an_unknown_profile_exits_2_with_the_valid_choices(capsys: pytest.CaptureFixture) -> None:
    code, out, err = doctor(["hardware=nope"], capsys)
    assert code == 2 and out == ""
    assert err.strip() == (
        "lightning-accel: error: hardware='nope' is not a hardware profile; valid choices: "
        f"{HARDWARE_PROFILES}."
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace"], "doctor='--trace' needs a run directory after it."),
        (["--json", "-cd"], "doctor='-cd' needs a config directory after it."),
        (["--fast"], "doctor='--fast' is not an argument; valid choices: --json, "),
    ],
)
def test_a_bad_argument_exits_2_naming_it(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = doctor(args, capsys)
    assert code == 2 and out == ""
    assert err.strip().startswith(f"lightning-accel: error: {message}")


def test_a_projects_hardware_profiles_are_judged_with_config_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hardware = tmp_path / "conf" / "hardware"
    hardware.mkdir(parents=True)
    (hardware / "laptop.yaml").write_text("defaults:\n  - cpu\n  - _self_\nname: laptop\n")
    (hardware / "bigbox.yaml").write_text("defaults:\n  - ddp\n  - _self_\nname: bigbox\n")
    (hardware / "broken.yaml").write_text("name: broken\ndevices: many\n")
    monkeypatch.setattr(doctor_cli, "gather", lambda: CPU_ONLY)
    conf = str(tmp_path / "conf")

    code, _, err = doctor(["--config-dir", conf], capsys)
    assert code == 2 and "hardware.devices='many'" in err
    (hardware / "broken.yaml").unlink()

    code, out, _ = doctor(["--json", "--config-dir", conf, "hardware=laptop"], capsys)
    assert code == 0
    verdicts = {p["name"]: p for p in json.loads(out)["profiles"]}
    assert (
        verdicts["laptop"]["runs"] and verdicts["laptop"]["resolved"] == verdicts["cpu"]["resolved"]
    )
    assert verdicts["bigbox"]["runs"] is False, "extends ddp: needs CUDA"
    assert set(verdicts) >= {"cpu", "ddp", "laptop", "bigbox"}

    code, _, err = doctor(["-cd", conf, "hardware=bigbox"], capsys)
    assert code == 1 and err.startswith("lightning-accel: error: hardware=bigbox cannot run here")
    code, _, err = doctor(["--config-dir", conf, "hardware=nope"], capsys)
    assert code == 2 and ", bigbox, " in err and ", laptop, " in err
    code, out, err = doctor(["--config-dir", str(tmp_path / "missing")], capsys)
    assert code == 2 and out == "" and "--config-dir=" in err and "is not a directory" in err
