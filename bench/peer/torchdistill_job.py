"""torchdistill's side of `make bench-peer`: the jobs of one torchdistill config, in this process.

Run with bench/.peer-venv/bin/python from the folder that holds data/cifar-10-batches-py:
    torchdistill_job.py --config torchdistill_kd.yaml --teacher teacher.pt --T 1 2 4 8 16 --out jobs.json
    torchdistill_job.py --config torchdistill_student.yaml --out jobs.json
Each job builds its models and torchdistill's DistillationBox (or TrainingBox for the student alone)
from the config, trains its epochs with the box's own forward_process / post_forward_process, then
measures the student's accuracy on the test split and saves the student's weights, as torchdistill's
example script does. Several temperatures run in one process, one after the other: the peer pays its
start-up once per sweep, as kdrun -m does. Writes one record per job (wall seconds, accuracy) as JSON.
"""

import argparse
import copy
import json
import os
import time

import torch
from torchdistill.common import yaml_util
from torchdistill.common.main_util import set_seed
from torchdistill.core.distillation import get_distillation_box
from torchdistill.core.training import get_training_box
from torchdistill.models.registry import get_model


def build_model(model_config):
    return get_model(model_config["key"], **model_config["kwargs"])


@torch.no_grad()
def test_accuracy(model, loader, device):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        total += len(y)
    return 100.0 * correct / total


def check_teacher(teacher, check_path):
    """The teacher's weights came from kdrun under other names: the same inputs must give the same logits."""
    check = torch.load(check_path, map_location="cpu", weights_only=True)
    with torch.no_grad():
        logits = teacher(check["inputs"])
    if not torch.allclose(logits, check["logits"], rtol=1e-4, atol=1e-4):
        raise SystemExit(f"torchdistill_job: the teacher's logits differ from kdrun's by up to "
                         f"{(logits - check['logits']).abs().max():.3g}: not the same teacher")


def run_job(config, teacher_path, teacher_check, temperature, seed, device, out_dir, max_steps):
    start = time.perf_counter()
    set_seed(seed)
    train_config = copy.deepcopy(config["train"])  # torchdistill edits the train config it is given
    models = config["models"]
    student = build_model(models["student_model"]).to(device)
    if "teacher_model" in models:
        teacher = build_model(models["teacher_model"])
        # Our weights file, loaded safely (torchdistill's own src_ckpt loader unpickles with weights_only=False).
        teacher.load_state_dict(torch.load(teacher_path, map_location="cpu", weights_only=True))
        teacher = teacher.to(device).eval()  # KD teaches with the teacher's running statistics, as kdrun does
        if teacher_check:
            check_teacher(teacher, teacher_check)
        train_config["criterion"]["kwargs"]["sub_terms"]["kd"]["criterion"]["kwargs"]["temperature"] = temperature
        box = get_distillation_box(teacher, student, config["datasets"], train_config, device, None, False, 1.0)
    else:
        box = get_training_box(student, config["datasets"], train_config, device, None, False, 1.0)
    steps = 0
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch.to(device), targets.to(device), supp_dict)
            box.post_forward_process(loss)
            steps += 1
            if steps == max_steps:
                break
        box.post_epoch_process()
    accuracy = test_accuracy(student, box.val_data_loader, device)
    torch.save({"model": student.state_dict()}, os.path.join(out_dir, f"student_T{temperature:g}.pt"))
    return {"T": temperature if "teacher_model" in models else None, "steps": steps, "test_acc": accuracy,
            "wall_s": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", help="the teacher's state_dict (torchdistill's resnet56 keys)")
    parser.add_argument("--teacher-check", help="inputs and the logits the teacher must give for them")
    parser.add_argument("--T", type=float, nargs="+", default=[4.0], help="one KD job per temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (tests)")
    parser.add_argument("--out", required=True, help="where to write the jobs' records (JSON)")
    args = parser.parse_args()
    start = time.perf_counter()
    device = torch.device("cpu")
    config = yaml_util.load_yaml_file(os.path.expanduser(args.config))  # builds the datasets, as torchdistill does
    out_dir = os.path.dirname(os.path.abspath(args.out))
    temperatures = args.T if "teacher_model" in config["models"] else [0.0]
    jobs = [run_job(config, args.teacher, args.teacher_check, T, args.seed, device, out_dir, args.max_steps) for T in temperatures]
    result = {"jobs": jobs, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "process_s_after_imports": time.perf_counter() - start}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
