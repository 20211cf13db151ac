# kdrun: `make install`, then `make demo`. `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
KDRUN := $(VENV)/bin/kdrun
PYTEST := $(PY) -m pytest

.PHONY: install test test-fast demo sweep-demo bench bench-peer bench-peer-env reproduce-cifar100 reproduce-hinton reproduce-hinton-omit reproduce-keras clean

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(KDRUN) --help >/dev/null && echo "kdrun installed in $(VENV); try: make demo"

# Every test, the slow end-to-end ones included (what CI runs): one test process per core
# (pytest-xdist; a file's tests stay in one process, so its shared fixtures are made once).
test:
	$(PYTEST) -n auto --dist loadfile --timeout 600

# The fast ones only, for the edit-test loop.
test-fast:
	$(PYTEST) -n auto --dist loadfile -m "not slow" --timeout 300

# Offline quick start on scikit-learn's digits: a teacher trained on every label, then a 200x smaller
# student from scratch and distilled over 5 seeds, with 5% of the labels (the rest an unlabelled transfer
# set) and, for contrast, with all of them; then a comparison table (results/transfer/README.md).
demo: export OMP_NUM_THREADS ?= 1
demo:
	$(KDRUN) -m experiment=few_labels strategy=scratch,kd dataset.labelled_fraction=0.05,1.0 seed=0,1,2,3,4

# A temperature sweep on digits with 5% of the labels (experiment=few_labels; T = 1..16, 3 seeds)
# with its references: the student trained from scratch on the same seeds, and the teacher (trained once, then cached).
# Scratch ignores T, so it runs as its own 3-job sweep rather than 15 repeats; then
# kdrun-report puts both sweeps in one table and plot (temperature_sweep.md/.png).
# One torch thread unless you say otherwise: the digits models are tiny, and on a busy
# 2-core machine two threads waiting for each other made this demo over 4x slower.
SWEEP_DEMO_DIR := outputs/sweeps/sweep-demo/$(shell date +%Y-%m-%d_%H-%M-%S)
sweep-demo: export OMP_NUM_THREADS ?= 1
sweep-demo:
	$(KDRUN) -m experiment=few_labels strategy=scratch seed=0,1,2 hydra.sweep.dir=$(SWEEP_DEMO_DIR)/scratch
	$(KDRUN) -m experiment=few_labels T=1,2,4,8,16 seed=0,1,2 hydra.sweep.dir=$(SWEEP_DEMO_DIR)/kd
	$(VENV)/bin/kdrun-report $(SWEEP_DEMO_DIR)/scratch $(SWEEP_DEMO_DIR)/kd --out $(SWEEP_DEMO_DIR)

# How close KD comes to training the student alone, live and with the teacher-output
# cache, against a plain PyTorch loop; prints a table, writes bench.json (< 10 min, 2 cores).
# Then image folders: streaming and in-memory images/s against torchvision's ImageFolder + DataLoader
# (bench_folders.json). Then kdrun against torchdistill (bench-peer), where its environment is present.
bench:
	$(PY) bench/bench.py --out bench.json
	$(PY) bench/bench_folders.py --out bench_folders.json
	@if [ -x $(PEER_VENV)/bin/python ]; then $(MAKE) --no-print-directory bench-peer; \
	else echo "bench-peer skipped: no torchdistill environment in $(PEER_VENV); make bench-peer-env makes it (PyPI), then make bench-peer"; fi

# kdrun against torchdistill 1.1.5 on the same job and pixels (bench/peer/): resnet56->resnet20, a 5-point
# T sweep and a student-only run, each tool in turn, 3 repetitions; medians, ratios, accuracies, the load.
# Needs Fashion-MNIST's IDX files (apt-get install dataset-fashion-mnist) and bench-peer-env. Writes
# bench/results/peer.json (PEER_OUT=... elsewhere). torchdistill lives in its own environment (ignored by git),
# with the torch and torchvision versions kdrun's has.
PEER_VENV := bench/.peer-venv
PEER_OUT ?= bench/results/peer.json
bench-peer:
	$(PY) bench/peer/bench_peer.py --out $(PEER_OUT)

bench-peer-env:
	python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/pip install --quiet $$($(PY) -c "import torch, torchvision; print(f'torch=={torch.__version__.split(\"+\")[0]} torchvision=={torchvision.__version__.split(\"+\")[0]}')") torchdistill==1.1.5
	@echo "torchdistill installed in $(PEER_VENV); try: make bench-peer"

# The RepDistiller/CRD CIFAR-100 table (13 pairs), beside the published numbers (results/published/cifar100.csv):
# per pair the teacher, the student from scratch and each of METHODS (default kd dkd; any loss= preset, +ls, +kd),
# 3 seeds, 240 epochs each; a GPU job. PAIRS=resnet56_resnet20 (space-separated) for a subset;
# REPRO_SMOKE=1 runs every target a few steps on a tiny subset (synthetic 3x32x32, 100 classes,
# when CIFAR-100 is not in data/). Tables in outputs/reproduce/cifar100/reproduction.md/.csv.
PAIRS ?=
METHODS ?= kd dkd
REPRO_OUT ?= outputs/reproduce/cifar100$(if $(REPRO_SMOKE),-smoke)
reproduce-cifar100:
	$(PY) -m kdrun.cli.reproduce --pairs "$(PAIRS)" --methods "$(METHODS)" --out $(REPRO_OUT) $(if $(REPRO_SMOKE),--smoke)

# Reproductions that run on a CPU (results/README.md). MNIST by default (downloaded into data/); on a
# machine without MNIST: REPRO_DATA="dataset=fashion_mnist dataset.root=/usr/share/datasets/fashion-mnist".
# REPRO_SCALE shrinks a run for a slow machine (results/*/README.md say what the committed runs used).
REPRO_DATA ?= dataset=mnist
REPRO_SCALE ?=
# Where the runs go: not REPRO_OUT, which reproduce-cifar100 sets above (so these once ran under its folder).
CPU_REPRO_OUT ?= outputs/repro

# Hinton et al. (2015), section 3: a dropout+jitter MLP teacher, an 800-800 student distilled at T=20
# and from scratch, a 30-30 student over T (HINTON_T); test errors beside the paper's (results/hinton/).
# The teacher trains once into $(HINTON_RUNS)/teacher, scaled by HINTON_TEACHER_SCALE (not REPRO_SCALE:
# a teacher cut short is a failed reproduction); reproduce-hinton and reproduce-hinton-omit both distil from
# it. Delete that folder to train it again. REPRO_SCALE shrinks the students.
HINTON_RUNS = $(CPU_REPRO_OUT)/hinton
HINTON_TEACHER = $(HINTON_RUNS)/teacher
HINTON_TEACHER_SCALE ?=
HINTON_T ?= 1,2.5,4,8,20
HINTON_OUT ?= results/hinton
# The distilled students clip the gradient norm to 2: at the preset's lr 0.05 and T=20 every kd seed's loss went
# non-finite by epoch 4 on Fashion-MNIST (results/hinton/README.md); the students from scratch never did.
HINTON_KD = teacher.checkpoint=$(HINTON_TEACHER)/checkpoints/last.pt trainer.clip_grad_norm=2
$(HINTON_TEACHER)/checkpoints/last.pt: export OMP_NUM_THREADS ?= 1
$(HINTON_TEACHER)/checkpoints/last.pt:
	rm -rf $(HINTON_TEACHER)
	$(KDRUN) experiment=hinton_teacher $(REPRO_DATA) $(HINTON_TEACHER_SCALE) trainer.progress=false hydra.run.dir=$(HINTON_TEACHER)

reproduce-hinton: export OMP_NUM_THREADS ?= 1
reproduce-hinton: $(HINTON_TEACHER)/checkpoints/last.pt
	rm -rf $(HINTON_RUNS)/scratch800 $(HINTON_RUNS)/kd800 $(HINTON_RUNS)/scratch30 $(HINTON_RUNS)/kd30
	$(KDRUN) -m experiment=hinton_student strategy=scratch seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(HINTON_RUNS)/scratch800
	$(KDRUN) -m experiment=hinton_student $(HINTON_KD) seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(HINTON_RUNS)/kd800
	$(KDRUN) -m experiment=hinton_student strategy=scratch 'student.hidden=[30,30]' seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(HINTON_RUNS)/scratch30
	$(KDRUN) -m experiment=hinton_student $(HINTON_KD) 'student.hidden=[30,30]' T=$(HINTON_T) seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(HINTON_RUNS)/kd30
	$(VENV)/bin/kdrun-report $(HINTON_RUNS) --out $(HINTON_OUT)/report
	$(PY) -m kdrun.report.hinton $(HINTON_RUNS) --out $(HINTON_OUT)

# Hinton et al. (2015), section 3's omitted class: the 800-800 student's transfer set lacks class
# HINTON_OMIT (the paper's digit 3; Fashion-MNIST's 3 is "Dress"), trained from scratch and distilled from
# the teacher above; errors overall and on that class, before and after raising its output bias by a b
# chosen on the validation split (kdrun/report/omitted_class.py; results/hinton_omit/).
HINTON_OMIT ?= 3
OMIT_RUNS = $(CPU_REPRO_OUT)/hinton_omit
HINTON_OMIT_OUT ?= results/hinton_omit
reproduce-hinton-omit: export OMP_NUM_THREADS ?= 1
reproduce-hinton-omit: $(HINTON_TEACHER)/checkpoints/last.pt
	rm -rf $(OMIT_RUNS)
	$(KDRUN) -m experiment=hinton_student strategy=scratch 'dataset.omit_classes=[$(HINTON_OMIT)]' seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(OMIT_RUNS)/scratch
	$(KDRUN) -m experiment=hinton_student $(HINTON_KD) 'dataset.omit_classes=[$(HINTON_OMIT)]' seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(OMIT_RUNS)/kd
	$(PY) -m kdrun.report.omitted_class $(OMIT_RUNS) --teacher $(HINTON_TEACHER) --out $(HINTON_OMIT_OUT)

# The Keras "Knowledge Distillation" example: conv 256/512 teacher, conv 16/32 student distilled
# (alpha 0.1, T 10) and from scratch, over 3 seeds; size, accuracy and latency (results/keras/).
# The students distil from the teacher's epoch with the best validation accuracy (best.pt): at constant
# lr its last epoch can be worse than the one before (results/keras/README.md).
KERAS_RUNS = $(CPU_REPRO_OUT)/keras
KERAS_OUT ?= results/keras
reproduce-keras: export OMP_NUM_THREADS ?= 1
reproduce-keras:
	rm -rf $(KERAS_RUNS)
	$(KDRUN) experiment=keras_mnist strategy=scratch student=cnn_teacher epochs=5 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.run.dir=$(KERAS_RUNS)/teacher
	$(KDRUN) -m experiment=keras_mnist strategy=scratch seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(KERAS_RUNS)/scratch
	$(KDRUN) -m experiment=keras_mnist teacher.checkpoint=$(KERAS_RUNS)/teacher/checkpoints/best.pt seed=0,1,2 $(REPRO_DATA) $(REPRO_SCALE) trainer.progress=false hydra.sweep.dir=$(KERAS_RUNS)/kd
	$(VENV)/bin/kdrun-report $(KERAS_RUNS) --out $(KERAS_OUT)

clean:
	rm -rf outputs multirun .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
