import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import pnp_stable as ps


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_roundtrip(tmp_path, suffix, channels):
    image = data.astronaut()[:64, :48] if channels == 3 else data.camera()[:64, :48]
    x = ps.to_tensor(image)
    assert x.shape == (1, channels, 64, 48) and x.dtype == torch.float32
    path = ps.save_image(x, tmp_path / f"img{suffix}")
    back = ps.load_image(path)
    assert back.shape == x.shape
    if suffix == ".jpg":  # lossy: compare the mean error
        assert (back - x).abs().mean().item() < 0.02
    else:
        assert (back - x).abs().max().item() <= 1 / 510


def test_sixteen_bit_and_gray_conversion(tmp_path):
    x = torch.linspace(0, 1, 32 * 32).reshape(1, 1, 32, 32)
    ps.save_image(x, tmp_path / "deep.png", bit_depth=16)
    assert (ps.load_image(tmp_path / "deep.png") - x).abs().max().item() < 1e-4
    colour = ps.to_tensor(data.astronaut()[:16, :16])
    ps.save_image(colour, tmp_path / "c.png")
    assert ps.load_image(tmp_path / "c.png", gray=True).shape == (1, 1, 16, 16)
    assert ps.load_image(tmp_path / "deep.png", gray=False).shape == (1, 3, 32, 32)


def test_bad_files_and_out_of_range(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="cannot read"):
        ps.load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="not found"):
        ps.load_image(tmp_path / "missing.png")
    x = torch.full((1, 1, 8, 8), 1.2)
    with pytest.raises(ValueError, match="clip=True"):
        ps.save_image(x, tmp_path / "o.png")
    ps.save_image(x, tmp_path / "o.png", clip=True)
    assert ps.load_image(tmp_path / "o.png").min().item() == 1.0


def test_a_float_array_keeps_values_just_outside_the_unit_range(tmp_path):
    """A solve's estimate crosses 0 and 1 slightly; a .npy result keeps it (the CLI clipped it and said so), an image
    format clips and counts, and clip=True clips an array too."""
    from pnp_stable import cli

    slight = torch.tensor([[-0.01, 0.5], [1.02, 1.0]])[None, None]
    ps.save_image(slight, tmp_path / "kept.npy")
    assert np.load(tmp_path / "kept.npy").tolist() == slight[0, 0].tolist()
    assert ps.load_image(tmp_path / "kept.npy").flatten().tolist() == slight.flatten().tolist()  # it reads back
    ps.save_image(slight, tmp_path / "clipped.npy", clip=True)
    assert np.load(tmp_path / "clipped.npy").min() == 0 and np.load(tmp_path / "clipped.npy").max() == 1
    ps.save_image(torch.full((1, 1, 2, 2), 0.5), tmp_path / "source.png")
    assert cli._write_image(slight, tmp_path / "out.npy", tmp_path / "source.png") == f"wrote {tmp_path / 'out.npy'}"
    assert "2 values outside [0, 1] clipped" in cli._write_image(slight, tmp_path / "out.png", tmp_path / "source.png")


def test_psnr_ssim():
    ref = ps.to_tensor(data.camera()[:64, :64]).repeat(2, 1, 1, 1)
    noisy = ref + 0.1 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    value = ps.psnr(noisy, ref)
    assert value.shape == (2,)
    assert value[0].item() == pytest.approx(20.0, abs=0.2)  # 10·log10(1 / 0.01)
    assert ps.ssim(ref, ref).tolist() == pytest.approx([1.0, 1.0])
    assert (ps.ssim(noisy, ref) < 0.9).all()
    with pytest.raises(ValueError, match="shape"):
        ps.psnr(noisy[:, :, :32], ref)
    with pytest.raises(ValueError, match="rank 4"):
        ps.psnr(ref[0], ref[0])


def test_npy_images_load_and_nan_is_refused(tmp_path):
    arr = np.random.default_rng(0).uniform(0, 1, (6, 7, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    x = ps.load_image(tmp_path / "x.npy")
    assert x.shape == (1, 3, 6, 7) and np.allclose(ps.to_numpy(x), arr)
    assert ps.load_image(tmp_path / "x.npy", gray=True).shape == (1, 1, 6, 7)
    arr[1, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(ValueError, match="nan.npy.*NaN"):
        ps.load_image(tmp_path / "nan.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="expected an array"):
        ps.load_image(tmp_path / "cube.npy")


def test_sixteen_bit_colour_tiff_keeps_its_precision(tmp_path):
    import tifffile

    raw = np.random.default_rng(0).integers(0, 65536, size=(16, 16, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", raw)
    x = ps.load_image(tmp_path / "rgb16.tif")
    assert x.shape == (1, 3, 16, 16)
    assert np.abs(x[0].permute(1, 2, 0).numpy() - raw / 65535).max() < 1e-6  # not rounded to 8 bits (4e-3 apart)


def test_a_transparent_alpha_channel_is_dropped_with_a_warning(tmp_path):
    rgba = np.full((8, 8, 4), 200, dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "opaque_not.png")
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    with pytest.warns(UserWarning, match="transparent pixels"):
        assert ps.load_image(tmp_path / "opaque_not.png").shape == (1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ps.load_image(tmp_path / "opaque.png").shape == (1, 3, 8, 8)


def test_psnr_of_identical_images_is_inf_without_a_warning():
    x = ps.to_tensor(data.camera()[:16, :16])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ps.psnr(x, x).tolist() == [float("inf")]


def test_sixteen_bit_colour_read_as_gray_keeps_its_precision(tmp_path):
    import tifffile

    raw = np.random.default_rng(1).integers(0, 65536, size=(8, 8, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", raw)
    luminance = (raw / 65535) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(ps.load_image(tmp_path / "rgb16.tif", gray=True)[0, 0].numpy() - luminance).max() < 1e-6


def test_metrics_and_saving_take_numpy_images_by_the_same_rule_as_the_solvers(tmp_path):
    from skimage import data

    image = data.camera()[:32, :32]
    noisy = np.clip(image.astype(int) + 10, 0, 255).astype(np.uint8)
    as_tensors = ps.psnr(ps.to_tensor(noisy), ps.to_tensor(image))
    assert torch.equal(ps.psnr(noisy, image), as_tensors)
    assert torch.allclose(ps.ssim(noisy, ps.to_tensor(image)), ps.ssim(ps.to_tensor(noisy), ps.to_tensor(image)))
    path = ps.save_image(image, tmp_path / "camera.png")
    assert np.allclose(ps.to_numpy(ps.load_image(path)), image / 255.0)  # read back what was written


def test_a_float_array_result_is_written_where_it_is_named(tmp_path):
    x = torch.rand(1, 3, 8, 8)
    for name in ("r.npy", "UPPER.NPY"):  # np.save(path) would add '.npy' to the second
        written = ps.save_image(x, tmp_path / name)
        assert written == tmp_path / name and written.is_file()
        assert np.array_equal(np.load(written), x[0].permute(1, 2, 0).numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UPPER.NPY", "r.npy"]
