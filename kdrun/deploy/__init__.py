"""Ship a student: export (ONNX, torch.export, TorchScript), int8, FLOPs, pruning, speed and robustness.

Entry points: `kdrun-export` (export_command.py) and `kdrun-eval` (eval_command.py).
"""
