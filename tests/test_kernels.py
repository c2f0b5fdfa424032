import warnings

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import pnp_stable as ps
from pnp_stable.operators import validate_kernel


@pytest.mark.parametrize(
    "kernel",
    [ps.gaussian_kernel(1.6), ps.gaussian_kernel(2.0, size=9), ps.uniform_kernel(9), ps.motion_kernel(0, size=19)],
)
def test_kernels_are_normalised(kernel):
    assert kernel.ndim == 2 and kernel.dtype == torch.float32
    assert (kernel >= 0).all()
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_gaussian_default_size_and_symmetry():
    k = ps.gaussian_kernel(1.6)
    assert k.shape == (11, 11)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    assert k.argmax().item() == 5 * 11 + 5


def test_motion_kernel_is_seeded():
    assert torch.equal(ps.motion_kernel(7), ps.motion_kernel(7))
    assert not torch.equal(ps.motion_kernel(7), ps.motion_kernel(8))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((3, 3), np.nan), "NaN"),
        (np.array([[0.5, -0.1], [0.3, 0.3]]), r"negative .*np.clip\(k, 0, None\)"),
        (np.ones((2, 3, 3)), "2-D"),
        (np.zeros((3, 3)), "positive sum"),
    ],
)
def test_invalid_kernels_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_kernel(bad)


def test_validate_accepts_deepinv_layout_and_normalises():
    k = validate_kernel(torch.ones(1, 1, 3, 3) * 5)
    assert k.shape == (3, 3) and torch.allclose(k, torch.full((3, 3), 1 / 9))


def _two_kernels():
    a = np.zeros((5, 7))
    a[2, 1:6] = 1.0
    return a, np.ones((3, 3))


def test_load_npy_and_npz(tmp_path):
    a, b = _two_kernels()
    np.save(tmp_path / "one.npy", a)
    np.save(tmp_path / "stack.npy", np.stack([b, b * 2]))
    np.savez(tmp_path / "many.npz", first=a, second=b)
    assert torch.allclose(ps.load_kernel(tmp_path / "one.npy"), torch.tensor(a / a.sum(), dtype=torch.float32))
    assert len(ps.load_kernels(tmp_path / "stack.npy")) == 2
    many = ps.load_kernels(tmp_path / "many.npz")
    assert list(many) == ["first", "second"]
    assert ps.load_kernel(tmp_path / "many.npz", "second").shape == (3, 3)
    assert ps.load_kernel(tmp_path / "many.npz", 1).shape == (3, 3)


def test_load_mat_classic_with_cell_array(tmp_path):
    a, b = _two_kernels()
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = a, b
    scipy.io.savemat(tmp_path / "k.mat", {"kernels": cell, "single": a})
    kernels = ps.load_kernels(tmp_path / "k.mat")
    assert set(kernels) == {"kernels[0]", "kernels[1]", "single"}
    assert kernels["kernels[0]"].shape == (5, 7)


def test_load_mat_v73_hdf5(tmp_path):
    a, _ = _two_kernels()
    with h5py.File(tmp_path / "k73.mat", "w") as f:
        f.create_dataset("kernel", data=a.T)  # MATLAB stores column-major
    k = ps.load_kernel(tmp_path / "k73.mat")
    assert k.shape == (5, 7)
    assert torch.allclose(k, torch.tensor(a / a.sum(), dtype=torch.float32))


def test_load_png(tmp_path):
    a, _ = _two_kernels()
    Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "k.png")
    k = ps.load_kernel(tmp_path / "k.png")
    assert k.shape == (5, 7) and k.sum().item() == pytest.approx(1.0)
    grey = (a * 255).astype(np.uint8)
    opaque = np.full_like(grey, 255)
    Image.fromarray(np.stack([grey, grey, grey, opaque], -1)).save(tmp_path / "rgba.png")  # matplotlib's imsave form
    assert torch.equal(ps.load_kernel(tmp_path / "rgba.png"), k)
    wide = (a / a.max() * 60000).astype(">u2")  # a big-endian 16-bit kernel (mode I;16B) is greyscale too
    Image.frombytes("I;16B", wide.shape[::-1], wide.tobytes()).save(tmp_path / "wide.tif")
    assert torch.allclose(ps.load_kernel(tmp_path / "wide.tif"), torch.tensor(a / a.sum(), dtype=torch.float32), atol=1e-4)
    Image.fromarray(np.stack([grey, grey // 2, grey], -1)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour or transparent image .RGB.; a blur kernel is one greyscale image"):
        ps.load_kernel(tmp_path / "colour.png")


@pytest.mark.parametrize("content, suffix", [(b"not a kernel", ".npy"), (b"junk", ".png"), (b"x", ".txt")])
def test_unreadable_kernel_files(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        ps.load_kernels(path)
    with pytest.raises(ValueError, match="not found"):
        ps.load_kernels(tmp_path / "missing.npy")


def test_shared_kernel_sets_load(data_root):
    levin = ps.load_kernels(data_root / "kernels" / "levin09.npz")
    assert len(levin) == 8
    assert [k.shape[0] for k in levin.values()] == [19, 17, 15, 27, 13, 21, 23, 23]
    usrnet = ps.load_kernels(data_root / "kernels" / "usrnet12.npz")
    assert len(usrnet) == 12 and all(k.shape == (25, 25) for k in usrnet.values())


def test_kernel_specs(tmp_path):
    from pnp_stable.operators import kernel_from_spec

    assert torch.allclose(kernel_from_spec("gaussian:1.6"), ps.gaussian_kernel(1.6))
    assert kernel_from_spec("gaussian:1:7").shape == (7, 7)
    assert torch.equal(kernel_from_spec("uniform:5"), ps.uniform_kernel(5))
    assert torch.equal(kernel_from_spec("motion:3:15"), ps.motion_kernel(3, 15))
    np.savez(tmp_path / "k.npz", a=np.ones((3, 3)), b=np.eye(5))
    with pytest.raises(ValueError, match="holds 2 kernels.*choose one"):  # no silent choice of the first
        kernel_from_spec(f"file:{tmp_path}/k.npz")
    np.save(tmp_path / "one.npy", np.ones((3, 3)))
    assert kernel_from_spec(f"file:{tmp_path}/one.npy").shape == (3, 3)
    assert kernel_from_spec(f"file:{tmp_path}/k.npz:1").shape == (5, 5)
    assert kernel_from_spec(f"file:{tmp_path}/k.npz:b").shape == (5, 5)
    for bad in ["gaussian", "gaussian:", "disk:3", "uniform:2.5", "motion:x", "gaussian:1:2:3"]:
        with pytest.raises(ValueError, match="bad kernel spec"):
            kernel_from_spec(bad)
    with pytest.raises(ValueError, match="not found"):
        kernel_from_spec("file:/nonexistent.npz")


@pytest.mark.parametrize("spec", ["gaussian:1e6", "uniform:5001", "gaussian:1:4099"])
def test_kernels_too_large_to_build_are_refused_before_allocating(spec):
    from pnp_stable.operators import kernel_from_spec

    with pytest.raises(ValueError, match="exceeds 4097 pixels; use a smaller kernel"):  # gaussian:1e6 was 288 TB
        kernel_from_spec(spec)


@pytest.mark.parametrize("spec", ["motion:1:4", "gaussian:1.5:4", "uniform:4", "gaussian:1:2.5"])
def test_even_or_fractional_kernel_sizes_are_refused_instead_of_shifting_or_truncating(spec):
    from pnp_stable.operators import kernel_from_spec

    with pytest.raises(ValueError, match="odd"):
        kernel_from_spec(spec)
    with pytest.raises(ValueError, match="odd"):
        ps.gaussian_kernel(1.0, size=6)


def _npz_bytes(tmp_path, **arrays) -> bytes:
    np.savez(tmp_path / "whole.npz", **arrays)
    return (tmp_path / "whole.npz").read_bytes()


def _corrupt_member(data: bytes) -> bytes:
    broken = bytearray(data)
    for i in range(100, 200):  # inside the first member's data: the zip's CRC check fails
        broken[i] ^= 0xFF
    return bytes(broken)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("truncated.npz", lambda d: _npz_bytes(d, a=np.ones((9, 9)))[:300], "not a valid .npz"),
        ("corrupt.npz", lambda d: _corrupt_member(_npz_bytes(d, a=np.ones((9, 9)))), "not a valid .npz"),
        ("pickled.npz", lambda d: _npz_bytes(d, a=np.array([np.ones((3, 3)), np.ones((5, 5))], dtype=object)),
         "object arrays"),
        ("empty.npz", lambda d: b"", "empty"),
        ("nothing.npz", lambda d: _npz_bytes(d), "no kernel found"),
        ("text.npz", lambda d: b"not a kernel", "neither a NumPy .npy header"),
        ("truncated.npy", lambda d: np.lib.format.magic(1, 0) + b"junk", "cannot read kernel file"),
        ("flat.npz", lambda d: _npz_bytes(d, k=np.ones(5)), "2-D"),
        ("nan.npz", lambda d: _npz_bytes(d, k=np.full((3, 3), np.nan)), "NaN"),
        ("zero.npz", lambda d: _npz_bytes(d, k=np.zeros((3, 3))), "positive sum"),
        ("negative.npz", lambda d: _npz_bytes(d, k=-np.ones((3, 3))), "negative"),
    ],
)
def test_broken_kernel_files_give_one_line_naming_the_file(tmp_path, name, content, message):
    from pnp_stable.operators import kernel_from_spec

    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    with pytest.raises(ValueError) as caught:
        kernel_from_spec(f"file:{path}:0")
    text = str(caught.value)
    assert name in text and message in text and "\n" not in text, text


def test_pickled_npy_and_a_missing_kernel_say_what_to_do(tmp_path):
    np.save(tmp_path / "ragged.npy", np.array([np.ones((3, 3)), np.ones((5, 5))], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"ragged\.npy.*object arrays.*numpy\.savez"):
        ps.load_kernels(tmp_path / "ragged.npy")
    np.savez(tmp_path / "two.npz", first=np.ones((3, 3)), second=np.eye(5))
    for index in ("third", 2, -3):
        with pytest.raises(ValueError, match=r"two\.npz.*\['first', 'second'\]"):
            ps.load_kernel(tmp_path / "two.npz", index)


def test_a_callers_kernel_is_normalised_with_a_warning_when_its_sum_is_not_one():
    with pytest.warns(UserWarning, match="sums to 25"):
        op = ps.blur(np.ones((5, 5)), img_size=(1, 16, 16))
    assert float(op.filter.sum()) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps.blur(np.ones((5, 5)) / 25, img_size=(1, 16, 16))
        ps.blur(ps.motion_kernel(1, size=9), img_size=(1, 16, 16))
