"""The teacher-output cache: exact hits, a key that follows the views, shared by sweeps, damage found,
refused when the disk is too small, and training on the same numbers with it or without it."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from kdrun.teachers import resolve as teachers
from kdrun.sources.checkpoint import save_checkpoint
from kdrun.sources.data import BatchAugment, batch_indices, drops_last, load_dataset
from kdrun.sources.models import build_model
from kdrun.run import run_experiment
from kdrun.runtime import Runtime, data_generator, resolve_runtime
from kdrun.strategies.base import Batch, Setup
from kdrun.strategies.catalog import strategy_class
from kdrun.teachers.outputs import (TargetFormat, TeacherCacheError, build_teacher_outputs, cache_key,
                                   output_recipe)
from kdrun.engine.trainer import evaluate_split

# Small enough for a second per run: 48 synthetic 8x8 images, batches of 16 (the last one dropped: 3 per epoch).
SMALL = ["dataset=synthetic", "dataset.train_size=50", "dataset.test_size=20", "dataset.image_size=8",
         "batch_size=16", "epochs=2", "teacher=mlp", "student=cnn_student", "device=cpu", "trainer.progress=false",
         "device.precision=fp32"]  # the precision some tests change (auto is bf16 on CPUs that have it natively)


def compose_cfg(tmp_path, *overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[*SMALL, f"paths.outputs={tmp_path}", *overrides])


def setup(cfg, teacher_seed: int = 0):
    """(data, augment, runtime, teacher) for a composed config."""
    runtime = resolve_runtime(cfg.device)
    data = load_dataset(cfg.dataset, runtime.device)
    augment = BatchAugment(cfg.dataset.augment.crop_padding, cfg.dataset.augment.hflip, data.mean, data.std)
    torch.manual_seed(teacher_seed)
    teacher = runtime.prepare(build_model(cfg.teacher.arch, data.in_channels, data.image_size, data.num_classes))
    return data, augment, runtime, teacher.eval()


def training_views(cfg, data, augment, runtime: Runtime, epochs: int):
    """The batches a trainer draws, epoch by epoch, as Batch objects."""
    n, batch_size = len(data.train_y), cfg.trainer.batch_size
    generator = data_generator(cfg.data_seed, runtime.device)
    for epoch in range(1, epochs + 1):
        for index in batch_indices(n, batch_size, generator=generator, drop_last=drops_last(n, batch_size),
                                   device=runtime.device):
            yield Batch(augment(data.train_x[index], generator, train=True), data.train_y[index], index, epoch)


def key_of(cfg, teacher_seed: int = 0) -> str:
    data, _, runtime, teacher = setup(cfg, teacher_seed)
    return cache_key(output_recipe(cfg, data, runtime, teacher, TargetFormat(data.num_classes, cfg.teacher.topk, cfg.loss.terms.kd.T)))


@pytest.mark.parametrize("topk", [None, 3])
def test_a_cache_hit_returns_exactly_the_teachers_output_for_that_view(tmp_path, topk):
    cfg = compose_cfg(tmp_path, f"teacher.topk={'null' if topk is None else topk}")
    data, augment, runtime, teacher = setup(cfg)
    fmt = TargetFormat(data.num_classes, topk, cfg.loss.terms.kd.T)

    recording = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    first = [(batch, recording(batch)) for batch in training_views(cfg, data, augment, runtime, epochs=2)]
    assert recording.summary()["teacher_cache_recorded"] == 2

    reading = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)  # a later job: every epoch is on disk
    for batch, recorded in first:
        got = reading(batch)
        with torch.inference_mode():
            expected = fmt.round(teacher(batch.x))
        assert torch.equal(got, expected) and torch.equal(got, recorded)
        assert got.grad_fn is None and not got.is_inference()  # usable in a loss, carries no teacher graph
    assert reading.summary()["teacher_cache_hits"] == 2 and reading.summary()["teacher_cache_recorded"] == 0


def test_top_k_targets_keep_the_top_logits_and_spread_the_rest_evenly():
    logits = torch.randn(4, 10) * 3
    fmt = TargetFormat(10, 3)
    targets = fmt.round(logits)
    top = logits.topk(3, dim=1).indices
    assert torch.equal(targets.gather(1, top), logits.gather(1, top).half().float())
    rest = torch.ones_like(logits, dtype=torch.bool).scatter(1, top, False)
    others = targets[rest].view(4, 7)
    assert torch.equal(others, others[:, :1].expand(4, 7))  # one shared logit: an even spread at any T
    mass = lambda t: t.softmax(1)[rest].view(4, 7).sum(1)  # noqa: E731
    assert torch.allclose(mass(targets), mass(logits), rtol=2e-3)  # the rest keeps its probability mass (T=1)
    assert TargetFormat(10, 100).k is None and TargetFormat(10, None).k is None  # few classes: all kept


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_top_k_targets_are_exact_at_the_runs_temperature(T):
    """1,000 classes, top 100 kept: at T the stored targets give the full logits' top-k probabilities and
    the rest's total mass (to fp16), so T^2 * KL between the full and the stored targets is the part of the
    tail's spread alone; a mass kept at T=1 instead would put the tail 0.03 off at T=4."""
    torch.manual_seed(0)
    logits = torch.randn(64, 1000) * 3
    targets = TargetFormat(1000, 100, T).round(logits)
    p_full, p_kept = (logits / T).softmax(1), (targets / T).softmax(1)
    top = logits.topk(100, dim=1).indices
    rest = torch.ones_like(logits, dtype=torch.bool).scatter(1, top, False)
    tail = lambda p: p[rest].view(64, 900).sum(1)  # noqa: E731
    # fp16 keeps a logit below 16 to within 0.004, so probabilities agree to within about 1% / T.
    assert torch.allclose(p_kept.gather(1, top), p_full.gather(1, top), rtol=1e-2 / T, atol=1e-7)
    assert torch.allclose(tail(p_kept), tail(p_full), rtol=1e-2 / T)
    # Against the direct computation of the tail's mass at T:
    direct = torch.exp(logits.masked_fill(~rest, -torch.inf) / T).sum(1) / torch.exp(logits / T).sum(1)
    assert torch.allclose(tail(p_kept), direct, rtol=1e-2 / T)
    if T != 1.0:
        at_one = TargetFormat(1000, 100, 1.0).round(logits)
        assert not torch.allclose(tail((at_one / T).softmax(1)), direct, rtol=1e-2)  # the old bias


def test_the_key_follows_teacher_data_augmentation_and_data_order_only(tmp_path):
    base = key_of(compose_cfg(tmp_path))
    for same in (["T=8"], ["loss.terms.ce.weight=0.5", "loss.terms.kd.weight=0.5"], ["student=resnet8"], ["seed=3"], ["epochs=5"]):
        assert key_of(compose_cfg(tmp_path, *same)) == base, same
    assert key_of(compose_cfg(tmp_path), teacher_seed=1) != base  # other teacher weights
    for other in (["dataset.seed=1"], ["dataset.train_size=60"], ["dataset.augment.crop_padding=2"],
                  ["dataset.augment.hflip=false"], ["data_seed=1"], ["batch_size=8"], ["teacher.topk=3"],
                  ["device.precision=bf16"], ["device.channels_last=false"]):
        assert key_of(compose_cfg(tmp_path, *other)) != base, other


def test_training_with_the_cache_gives_the_same_numbers_and_a_sweep_shares_one_cache(tmp_path):
    def run(name: str, *overrides: str) -> tuple[list[dict], dict]:
        run_dir = tmp_path / name
        summary = run_experiment(compose_cfg(tmp_path, *overrides), run_dir)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records], summary

    live, live_summary = run("live", "teacher.cache=false")
    recorded, recorded_summary = run("recorded")
    cached, cached_summary = run("cached")
    assert live == recorded == cached  # every loss term, train and test accuracy, to the last bit
    assert live_summary["teacher_outputs"] == "live"
    assert (recorded_summary["teacher_cache_recorded"], recorded_summary["teacher_cache_hits"]) == (2, 0)
    assert (cached_summary["teacher_cache_recorded"], cached_summary["teacher_cache_hits"]) == (0, 2)

    for T in (1, 8):  # a temperature sweep reads the same file
        _, summary = run(f"T{T}", f"T={T}")
        assert (summary["teacher_cache_recorded"], summary["teacher_cache_hits"]) == (0, 2)
    assert len(list((tmp_path / "teacher_outputs").iterdir())) == 1


def test_a_damaged_epoch_file_is_reported_and_recomputed(tmp_path, capsys):
    cfg = compose_cfg(tmp_path)
    data, augment, runtime, teacher = setup(cfg)
    outputs = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    batches = list(training_views(cfg, data, augment, runtime, epochs=2))
    expected = [outputs(batch) for batch in batches]
    first, second = outputs.cache.path(1), outputs.cache.path(2)
    flipped = bytearray(first.read_bytes())
    flipped[-7] ^= 0x10  # one bit of the payload
    first.write_bytes(bytes(flipped))
    second.write_bytes(second.read_bytes()[:-3])  # truncated

    again = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    capsys.readouterr()
    got = [again(batch) for batch in batches]
    out = " ".join(capsys.readouterr().err.split())
    assert "epoch_0001.bin is damaged (its CRC32 does not match its contents)" in out
    assert "epoch_0002.bin is damaged" in out and "recomputing that epoch" in out
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert again.summary()["teacher_cache_recorded"] == 2  # rewritten whole
    healed = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    assert all(torch.equal(healed(batch), e) for batch, e in zip(batches, expected))
    assert healed.summary()["teacher_cache_hits"] == 2


def test_a_cache_for_other_views_or_another_recipe_is_refused(tmp_path):
    cfg = compose_cfg(tmp_path)
    data, augment, runtime, teacher = setup(cfg)
    outputs = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    batches = list(training_views(cfg, data, augment, runtime, epochs=2))
    for batch in batches:
        outputs(batch)
    reading = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    first = batches[0]
    with pytest.raises(TeacherCacheError, match="differ from the views its outputs were recorded for"):
        reading(Batch(first.x.flip(-1), first.y, first.index, first.epoch))

    (outputs.cache.dir / "recipe.json").write_text('{"version": 0}')
    with pytest.raises(TeacherCacheError, match="another recipe"):
        build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)


def test_a_cache_that_would_not_fit_the_disk_is_refused_with_its_size(tmp_path, monkeypatch, capsys):
    cfg = compose_cfg(tmp_path, "epochs=240")
    data, _, runtime, teacher = setup(cfg)
    usage = type("usage", (), {"free": 100 * 2**20})
    monkeypatch.setattr("kdrun.teachers.outputs.serve.shutil.disk_usage", lambda path: usage)
    with pytest.raises(TeacherCacheError, match=r"needs .* more .* only 104.9 MB is free .*teacher.cache=false"):
        build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    # 240 epochs x 50 samples x (10 fp16 logits + a 16-bit view checksum) + a 64-byte header per epoch
    assert f"= {240 * (64 + 50 * 22) / 1000:.1f} KB on disk" in " ".join(capsys.readouterr().err.split())


def test_the_live_path_is_lean_and_shares_the_students_batch(tmp_path):
    cfg = compose_cfg(tmp_path, "teacher.cache=false")
    data, augment, runtime, teacher = setup(cfg)
    seen = []
    teacher.register_forward_hook(lambda module, args, out: seen.append((args[0], torch.is_inference_mode_enabled())))
    outputs = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    batch = next(training_views(cfg, data, augment, runtime, epochs=1))
    targets = outputs(batch)
    assert seen[0][0] is batch.x and seen[0][1]  # the student's own augmented batch, under inference_mode
    assert targets.grad_fn is None and not targets.requires_grad
    assert torch.equal(targets, TargetFormat(data.num_classes, 100).round(teacher(batch.x)))
    assert outputs.cache is None and outputs.summary() == {"teacher_outputs": "live"}


def test_warm_up_changes_nothing_and_is_never_recorded(tmp_path):

    cfg = compose_cfg(tmp_path)
    data, augment, runtime, _ = setup(cfg)
    cfg.teacher.checkpoint = None
    strategy = strategy_class(cfg.strategy.name).from_config(Setup(cfg, data, augment, runtime))
    before = {k: v.clone() for k, v in strategy.student.state_dict().items()}
    rng = torch.get_rng_state()
    # The model is not compiled (prepare did not), so this runs warm_up's step and its undoing quickly.
    Runtime(runtime.device, runtime.precision, runtime.channels_last, compile=True).warm_up(
        strategy, data, augment, cfg.trainer.batch_size)
    after = strategy.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in strategy.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    assert not any(strategy.teacher_outputs.cache.dir.glob("epoch_*"))


@pytest.mark.slow
def test_compile_is_in_place_so_checkpoints_do_not_change(tmp_path):
    torch.manual_seed(0)
    eager = build_model("cnn_student", 3, 8, 10)
    compiled = Runtime(torch.device("cpu"), "fp32", True, compile=True).prepare(build_model("cnn_student", 3, 8, 10))
    compiled.load_state_dict(eager.state_dict())
    assert type(compiled) is type(eager) and list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(compiled(x.contiguous(memory_format=torch.channels_last)), eager(x), atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_steps_between_an_epochs_ends_copy_nothing_between_host_and_device(tmp_path):
    cfg = compose_cfg(tmp_path, "device=cuda", "dataset.train_size=330", "batch_size=32")  # 10 steps an epoch
    data, augment, runtime, teacher = setup(cfg)
    batches = list(training_views(cfg, data, augment, runtime, epochs=1))
    recording = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    for batch in batches:
        recording(batch)
    live = build_teacher_outputs(compose_cfg(tmp_path, "device=cuda", "teacher.cache=false"), data, runtime, teacher)
    cached = build_teacher_outputs(cfg, data, runtime, teacher, cfg.loss.terms.kd.T)
    for name, outputs in (("live", live), ("cached", cached)):
        outputs(batches[0])  # a cached epoch moves to the device here, in one copy per tensor
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for batch in batches[1:-1]:
                outputs(batch)
            torch.cuda.synchronize()
        copies = [e.name for e in prof.events() if "HtoD" in e.name or "DtoH" in e.name]
        assert copies == [], (name, copies)
    assert cached.summary()["teacher_cache_hits"] == 1


def test_a_teacher_checkpoint_is_evaluated_once_per_process_for_the_same_file_split_and_precision(tmp_path, monkeypatch):
    # A sweep's jobs share one teacher file: its test accuracy is measured by the first job only, and measured
    # again for anything that could change it (another test split, precision, or the file rewritten).
    cfg = compose_cfg(tmp_path)
    data, augment, runtime, teacher = setup(cfg)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher)
    cfg.teacher.checkpoint = str(path)
    measured = []
    monkeypatch.setattr(teachers, "evaluate_split", lambda *a, **k: measured.append(a[1]) or evaluate_split(*a, **k))

    first = teachers.resolve_teacher(cfg, data, augment, runtime)
    again = teachers.resolve_teacher(cfg, data, augment, runtime)
    assert len(measured) == 1
    assert first.test_acc == again.test_acc == evaluate_split(again.model, data, augment, runtime, 1024)

    other_split = load_dataset(compose_cfg(tmp_path, "dataset.seed=1").dataset, runtime.device)
    teachers.resolve_teacher(cfg, other_split, augment, runtime)
    assert len(measured) == 2 and measured[-1] is other_split
    teachers.resolve_teacher(cfg, data, augment, Runtime(runtime.device, "bf16", runtime.channels_last))
    assert len(measured) == 3
    torch.manual_seed(5)
    save_checkpoint(path, build_model(cfg.teacher.arch, data.in_channels, data.image_size, data.num_classes))
    teachers.resolve_teacher(cfg, data, augment, runtime)
    assert len(measured) == 4
