# Every target bootstraps .venv (python3 -m venv + pip install -e .[test]) when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/pnp-stable demo --out demo_out

# bench: the exact commands behind benchmarks/results/*.md, sized for 2 CPU cores (many hours; architectures.py
# and robust_classification.py only evaluate while their committed training states and the shipped classifiers are
# present, and resume where an interrupted run stopped; tests/test_packaging.py keeps this list and the results
# files in step). Data: ../shared/data, or
# PNP_STABLE_DATA=/path/to/data make bench. bench-full: the full protocols (Set3C + CBSD10, two noise
# levels, whole images, every test image): many hours on 2 CPU cores, meant for a GPU machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/operators.py
	$(BIN)/python benchmarks/lipschitz_vs_depth.py
	$(BIN)/python benchmarks/denoiser_speed.py
	$(BIN)/python benchmarks/solver_overhead.py
	$(BIN)/python benchmarks/speed.py --threads 1
	$(BIN)/python benchmarks/denoise.py --images 10 --sets BSD68 Set12 CBSD68 --exclude convex-ridge-gray convex-ridge-color --threads 1
	$(BIN)/python benchmarks/denoise.py --images 10 --sets CBSD68 --sigmas 1 2.55 5.1 7.65 --exclude convex-ridge-color --threads 1 --out benchmarks/results/denoise-low.md
	$(BIN)/python benchmarks/denoise.py --model pnp_stable/denoisers/weights/averaged-sll-lownoise-gray.safetensors --model pnp_stable/denoisers/weights/averaged-sll-pnp-gray.safetensors --model pnp_stable/denoisers/weights/averaged-sll-gray.safetensors --no-bm3d --no-models --sets BSD68 Set12 --images 10 --sigmas 1 2.55 5.1 7.65 15 25 --threads 2 --out benchmarks/results/denoise-gray-pnp.md
	$(BIN)/python benchmarks/tune.py --images 3 --size 80 --max-iter 200 --threads 1
	$(BIN)/python benchmarks/tune.py --solvers fb --strengths 1 --images 3 --size 80 --max-iter 300 --tol 1e-7 --jobs 2 --threads 1 --out benchmarks/results/tuning-fb.md
	$(BIN)/python benchmarks/convergence.py --size 64 --iters 1000 --threads 1
	$(BIN)/python benchmarks/deblur.py --sets Set3C --noises 2.55 --size 96 --validation 4 --jobs 2 --threads 1
	$(BIN)/python benchmarks/deblur.py --sets Set3C --noises 2.55 --size 96 --validation 4 --jobs 2 --threads 1 --methods bm3d-dpir guided-bm3d-drs guided-bm3dlc-drs guided-dncnn-drs guided-averaged-drs --out benchmarks/results/deblur-guided
	$(BIN)/python benchmarks/deblur.py --sets Set3C --noises 2.55 7.65 12.75 --size 96 --validation 4 --jobs 2 --threads 1 --methods auto-fb auto-hqs auto-drs --models auto=auto,averaged-color --out benchmarks/results/deblur-auto
	$(BIN)/python benchmarks/deblur.py --sets Set3C --noises 7.65 --size 96 --validation 4 --jobs 2 --threads 1 --methods ours-fb ours-hqs ours-drs auto-fb auto-hqs auto-drs ridge-drs dncnn-drs bm3d-hqs bm3d-dpir guided-bm3d-drs tv wiener --out benchmarks/results/deblur-7.65
	$(BIN)/python benchmarks/deblur.py --gray --sets Set12 --noises 2.55 --size 96 --validation 4 --jobs 2 --threads 1 --methods ours-fb ours-hqs ours-drs auto-fb auto-hqs auto-drs ridge-drs dncnn-drs bm3d-hqs bm3d-dpir guided-bm3d-drs tv wiener --out benchmarks/results/deblur-gray
	$(BIN)/python benchmarks/deblur.py --gray --sets Set12 --noises 2.55 7.65 12.75 --size 96 --validation 4 --jobs 2 --threads 1 --methods auto-fb auto-hqs auto-drs --models auto=auto,averaged-sll-gray --out benchmarks/results/deblur-gray-auto
	$(BIN)/python benchmarks/deblur.py --gray --sets Set12 --noises 7.65 --size 96 --validation 4 --jobs 2 --threads 1 --methods ours-fb ours-hqs ours-drs auto-fb auto-hqs auto-drs ridge-drs dncnn-drs bm3d-hqs bm3d-dpir guided-bm3d-drs tv wiener --out benchmarks/results/deblur-gray-7.65
	$(BIN)/python benchmarks/denoise.py --images 10 --sets BSD68 CBSD68 --sigmas 25 --no-models --guides bm3d dncnn averaged --constructions bm3d bm3d-4+6 nlm --threads 2 --out benchmarks/results/denoise-guided.md
	$(BIN)/python benchmarks/denoise.py --model training/screening/convex-ridge.safetensors --no-bm3d --no-models --sets BSD68 --images 10 --threads 1 --out benchmarks/results/denoise-convex-ridge.md
	$(BIN)/python benchmarks/denoise.py --model pnp_stable/denoisers/weights/convex-ridge-color.safetensors --no-bm3d --no-models --sets CBSD68 --images 10 --sigmas 25 15 --threads 2 --out benchmarks/results/denoise-convex-ridge-color.md
	$(BIN)/python benchmarks/denoise.py --model pnp_stable/denoisers/weights/convex-ridge-color.safetensors --no-bm3d --no-models --sets CBSD68 --images 10 --sigmas 50 --threads 2 --out benchmarks/results/denoise-convex-ridge-color-50.md
	$(BIN)/python benchmarks/guided_speed.py
	$(BIN)/python benchmarks/bm3d_threads.py
	$(BIN)/python benchmarks/boundary.py
	$(BIN)/python benchmarks/fuzz_inputs.py
	$(BIN)/python benchmarks/training_speed.py
	$(BIN)/python benchmarks/compile_speed.py
	$(BIN)/python benchmarks/architectures.py
	$(BIN)/python benchmarks/robust_classification.py
	$(BIN)/python benchmarks/tiling.py
	$(BIN)/python benchmarks/time_to_solution.py
	$(BIN)/python benchmarks/anderson_memory.py
	$(BIN)/python benchmarks/whole_image_memory.py

bench-full: $(STAMP)
	$(BIN)/python benchmarks/denoise.py --out benchmarks/results/denoise-full.md
	$(BIN)/python benchmarks/convergence.py --size 256 --iters 1000 --out benchmarks/results/convergence-full
	$(BIN)/python benchmarks/deblur.py --noises 2.55 7.65 12.75 --out benchmarks/results/deblur-full

clean:
	rm -rf $(VENV) build *.egg-info
