"""Continuing runs: which directory a run writes to, whether it starts, goes on or is already done,
and the command that resumes it.

    resume=null   a new run in a new directory; two runs started in the same second get two
    resume=DIR    go on with the run in DIR (with -m: the sweep in DIR, job by job)
    resume=auto   go on with whatever the configured directory holds (hydra.run.dir or
                  hydra.sweep.dir, set on the command line), or start there

Going on means: a completed run (metrics.json says so, and its checkpoints are the files whose sha256 it
recorded) is skipped; a run with checkpoints/last.pt continues from it; anything else starts from the
beginning.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.sources.checkpoint import load_checkpoint
from kdrun.distributed import current_world
from kdrun.errors import CheckpointError, ConfigError
from kdrun.io import file_sha256
from kdrun.config.schema import keys_with_role

# Keys that may differ between a run and its resume: they say where files are, how the run is
# watched or how fast it runs, not what is trained (kdrun.config.schema roles).
RESUME_MAY_CHANGE = ("name", *keys_with_role("location", "display", "speed"))

_claimed: dict[str, str] = {}  # base -> directory this process created for it


def register_resolvers() -> None:
    """`${kdrun_run_dir:${resume},DEFAULT}` and `${kdrun_sweep_dir:...}`, used in conf/config.yaml."""
    for name, sweep in (("kdrun_run_dir", False), ("kdrun_sweep_dir", True)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(
                name, lambda resume, default, _sweep=sweep: output_dir(resume, default, sweep=_sweep), use_cache=True)


def output_dir(resume, default: str, *, sweep: bool) -> str:
    """The directory of a run (or, if `sweep`, of a multirun), as hydra.run.dir / hydra.sweep.dir."""
    if resume is None or (resume == "auto" and not Path(default).exists()):
        return claim_new_dir(default)
    if resume == "auto":
        return default
    path = Path(str(resume)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"resume={resume}: no such directory; give a run directory "
                          f"(outputs/runs/<date>/<time>_<name>) or, with -m, a sweep directory")
    is_sweep = (path / "multirun.yaml").is_file()
    if not is_sweep and not holds_run(path):
        raise ConfigError(f"resume={resume} holds no kdrun run or sweep (no config.yaml, .hydra/ or "
                          f"checkpoints/last.pt; a sweep has multirun.yaml); give a run directory "
                          f"(outputs/runs/<date>/<time>_<name>) or, with -m, a sweep directory")
    if sweep and not is_sweep and (path / "config.yaml").is_file():
        raise ConfigError(f"resume={resume} is a single run, not a sweep: resume it without -m")
    if not sweep and is_sweep:
        raise ConfigError(f"resume={resume} is a sweep directory: resume it with kdrun -m ... resume={resume}")
    return str(path)


def holds_run(path: Path) -> bool:
    """A run directory: what Hydra (.hydra/) or kdrun (config.yaml, a last.pt) leave in one."""
    return ((path / ".hydra").is_dir() or (path / "config.yaml").is_file()
            or (path / "checkpoints" / "last.pt").is_file())


def check_resume_argument(argv: list[str]) -> None:
    """Check a `resume=DIR` on the command line before Hydra resolves (and creates) any directory."""
    sweep = "-m" in argv or "--multirun" in argv
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "resume" and value not in ("", "null", "auto"):
            output_dir(value, "", sweep=sweep)


def claim_new_dir(base: str) -> str:
    """`base`, else `base-1`, `base-2`, ...: the first one this process creates. mkdir either creates a
    directory or fails, so two processes never get the same one."""
    world = current_world()
    if base not in _claimed and not world.is_main:  # one run, one directory: rank 0's
        _claimed[base] = world.from_main(None)
    if base not in _claimed:
        path = Path(base)
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate, n = path, 0
        while True:
            try:
                candidate.mkdir()
                break
            except FileExistsError:
                n += 1
                candidate = path.with_name(f"{path.name}-{n}")
            except OSError as exc:  # read-only, a file in the way: inside Hydra's resolver an exception
                # would become a traceback of Hydra's own, so say it and leave here
                print(f"error: cannot create the output folder {candidate}: {exc.strerror or exc}; "
                      f"choose a writable folder with paths.outputs=...", file=sys.stderr)
                raise SystemExit(2) from exc
        _claimed[base] = world.from_main(str(candidate))
    return _claimed[base]


def read_summary(run_dir: Path) -> dict:
    """metrics.json, or {} if there is none (or it is unreadable)."""
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def is_completed(run_dir: Path) -> bool:
    return read_summary(run_dir).get("status") == "completed"


def checkpoint_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every checkpoint of a run (born-again's generations included), by path in the run."""
    return {str(p.relative_to(run_dir)): file_sha256(p) for p in sorted(run_dir.glob("**/checkpoints/*.pt"))}


def check_completed_intact(run_dir: Path) -> None:
    """A completed run is only skipped if its checkpoints are the ones it wrote: each recorded one is there
    with its sha256, and loads as a kdrun checkpoint. Raise CheckpointError naming the first that is not."""
    recorded = read_summary(run_dir).get("checkpoints")
    names = recorded if isinstance(recorded, dict) else {  # a run from before checksums: the format alone
        str(p.relative_to(run_dir)): None for p in sorted(run_dir.glob("**/checkpoints/last.pt"))}
    for name, digest in names.items():
        path = run_dir / name
        try:
            if not path.is_file():
                raise CheckpointError("is missing")
            if digest is not None and file_sha256(path) != digest:
                raise CheckpointError("is not the file the run wrote (its sha256 differs from metrics.json's; "
                                      "cut short or overwritten?)")
            load_checkpoint(path)
        except CheckpointError as exc:
            reason = str(exc).replace(repr(str(path)), "").strip()
            raise CheckpointError(
                f"{run_dir} completed, but its {name} {reason}; so it is not skipped as complete. Its weights are "
                f"lost (metrics.json still holds its results): to train it again, move {run_dir} away "
                f"(or start a new run without resume)") from exc


def check_can_start(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to start a new run over an existing one unless resume is set (nothing is overwritten)."""
    if cfg.resume is not None:
        return
    if is_completed(run_dir) or any(run_dir.glob("**/checkpoints/last.pt")):
        raise ConfigError(f"{run_dir} already holds a run; add resume=auto to go on with it (a completed run is "
                          f"skipped), or choose another directory")


def check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resume trains what the run trained: refuse a config that differs, naming each difference."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = _flatten(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True))
    now = _flatten(OmegaConf.to_container(cfg, resolve=True))
    differences = [f"{key}: {saved.get(key, '<unset>')!r} in the run, {now.get(key, '<unset>')!r} now"
                   for key in sorted(saved.keys() | now.keys())
                   if saved.get(key) != now.get(key) and not _may_change(key) and not _new_and_off(saved, now, key)]
    if differences:
        raise ConfigError(
            f"cannot resume {run_dir}: this command's config differs from the run's config.yaml\n  "
            + "\n  ".join(differences)
            + "\nrun the command that started it (with resume=...), or start a new run without resume")


# Keys a later kdrun added for what an older run read under another key: the teacher's recipe was the run's.
WAS_READ_AS = {"teacher.optim.": "optim.", "teacher.batch_size": "trainer.batch_size"}


def _new_and_off(saved: dict, now: dict, key: str) -> bool:
    """A key a later kdrun added (the run's config.yaml lacks it) at a value that turns nothing on (its
    default: student.qat=false, a null path), or at the value the run read under its old key (WAS_READ_AS):
    the run trains as it did, so it may resume after an upgrade."""
    if key in saved:
        return False
    for new, old in WAS_READ_AS.items():
        if key.startswith(new) and saved.get(old + key[len(new):]) == now.get(key):
            return True
    return now.get(key) in (None, False, 0, "none", [])


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def resume_command(target: Path, multirun: bool, argv: list[str] | None = None) -> str:
    """The command that continues this run (or sweep): the one typed, with resume=TARGET."""
    argv = sys.argv[1:] if argv is None else argv
    args = [a for a in argv if not a.startswith(("resume=", "+resume=", "++resume=")) and a not in ("-m", "--multirun")]
    return shlex.join(["kdrun", *(["-m"] if multirun else []), *args, f"resume={target}"])
