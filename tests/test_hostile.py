"""Hostile image files: every good file is classified, every bad one is one clear error."""
import io
import resource
import subprocess
import sys
import zlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import gencls
from gencls.data import load_image
from gencls.errors import InputError

SHAPE = (1, 28, 28)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(side=20000) -> bytes:
    """A real side x side grayscale PNG of zeros that compresses to a few hundred kB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, mnist_test):
    d = tmp_path_factory.mktemp("hostile")
    digit = mnist_test.images[0, 0].numpy()  # a 7
    good = {}
    Image.fromarray(digit).save(d / "plain.png")
    good["plain.png"] = "7"
    Image.fromarray(digit).resize((1, 1)).save(d / "one_pixel.png")
    good["one_pixel.png"] = None
    Image.fromarray(digit).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    good["cmyk.jpg"] = "7"
    Image.fromarray(digit.astype(np.uint16) * 257).save(d / "sixteen_bit.png")
    good["sixteen_bit.png"] = "7"
    Image.fromarray(digit).convert("P").save(d / "palette.png")
    good["palette.png"] = "7"
    rgba = Image.fromarray(digit).convert("RGBA")
    rgba.putalpha(255)
    rgba.save(d / "alpha.png")
    good["alpha.png"] = "7"
    frames = [Image.fromarray(digit).convert("P"), Image.fromarray(255 - digit).convert("P")]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good["animated.gif"] = "7"
    rotated = Image.fromarray(digit).rotate(90, expand=True)  # stored sideways, EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    rotated.save(d / "exif_rotated.jpg", exif=exif, quality=95)
    good["exif_rotated.jpg"] = "7"
    bad = {}
    raw = (d / "plain.png").read_bytes()
    (d / "truncated.png").write_bytes(raw[: len(raw) // 2])
    bad["truncated.png"] = "cannot decode"
    (d / "empty.png").write_bytes(b"")
    bad["empty.png"] = "not a readable image"
    (d / "text.png").write_text("hello, I am not an image")
    bad["text.png"] = "not a readable image"
    (d / "bomb.png").write_bytes(decompression_bomb())
    bad["bomb.png"] = "too large"
    return d, good, bad


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("hrun") / "run"
    gencls.train(gencls.TrainConfig(method="supervised", labels=1000, subset=3000, val_size=500, epochs=2,
                                    out=str(out), progress=False, tensorboard=False, device="cpu"))
    return gencls.load_run(out)


def test_each_hostile_file_gets_a_result_or_one_clear_error(hostile, run):
    d, good, bad = hostile
    results = {r.path.rsplit("/", 1)[-1]: r for r in gencls.predict(run, [d])}
    assert set(results) == set(good) | set(bad)
    for name, label in good.items():
        r = results[name]
        assert r.error is None, (name, r.error)
        if label is not None:
            assert r.label == label, (name, r.top_k)
    for name, needle in bad.items():
        assert results[name].error and needle in results[name].error, (name, results[name].error)
        assert name in results[name].error


def test_bomb_is_refused_without_decoding(hostile):
    d, _, _ = hostile
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="too large"):
        load_image(d / "bomb.png", SHAPE)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: never 400 MB of pixels


def test_ten_thousand_tiny_files(tmp_path, run, mnist_test):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(10_000):
        img = mnist_test.images[i % 100, 0].numpy()
        Image.fromarray(img).save(d / f"{i:05d}.png", compress_level=1)
    (d / "zz_bad.png").write_bytes(b"junk")
    proc = subprocess.run([sys.executable, "-m", "gencls", "predict", str(run.path), str(d), "--format", "csv"],
                          capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 + 10_001
    assert proc.returncode == 1 and "1 of 10001 files could not be read" in proc.stderr
    direct = run.predict_classes(mnist_test.images[:100].float() / 255)
    got = [ln.split(",")[1] for ln in lines[1:101]]
    assert got == direct


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_give_a_tensor_or_our_error(tmp_path, data):
    p = tmp_path / "random.png"
    p.write_bytes(data)
    try:
        x = load_image(p, SHAPE)
    except InputError:
        return
    assert x.shape == SHAPE and x.dtype == torch.float32


FORMATS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB", "CMYK"),
           "BMP": ("1", "L", "P", "RGB"), "TIFF": ("1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
           "GIF": ("L", "P"), "WEBP": ("RGB", "RGBA")}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(FORMATS)), w=st.integers(1, 120), h=st.integers(1, 120), seed=st.integers(0, 2**16),
       channels=st.sampled_from([1, 3]), data=st.data())
def test_random_valid_images_give_the_right_shape(tmp_path, fmt, w, h, seed, channels, data):
    mode = data.draw(st.sampled_from(FORMATS[fmt]))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
    if mode in ("I;16", "I", "F"):
        arr = rng.integers(0, 65535, size=(h, w)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        img = Image.fromarray(arr)
    else:
        img = base.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    p = tmp_path / f"img.{fmt.lower()}"
    p.write_bytes(buf.getvalue())
    x = load_image(p, (channels, 28, 28))
    assert x.shape == (channels, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_16_bit_and_float_images_are_scaled_by_their_type_not_their_maximum(tmp_path):
    """One value is one gray whatever else is in the image (it used to be scaled by each image's maximum)."""
    flat = np.full((8, 8), 30000, np.uint16)
    bright = flat.copy()
    bright[0, 0] = 60000
    Image.fromarray(flat).save(tmp_path / "flat.png")
    Image.fromarray(bright).save(tmp_path / "bright.png")
    a = load_image(tmp_path / "flat.png", (1, 8, 8), invert="no")
    b = load_image(tmp_path / "bright.png", (1, 8, 8), invert="no")
    assert float(a[0, 4, 4]) == float(b[0, 4, 4]) == pytest.approx(round(30000 / 65535 * 255) / 255)
    Image.fromarray(flat.astype(np.int32)).save(tmp_path / "as_i.tif")  # 16-bit data in a 32-bit image
    assert torch.equal(load_image(tmp_path / "as_i.tif", (1, 8, 8), invert="no"), a)

    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)  # a float image in [0, 1]: used as is
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    x = load_image(tmp_path / "unit.tif", (1, 8, 8), invert="no")
    assert float(x.max()) == 1.0 and float(x[0, 4, 0]) == pytest.approx(round(unit[4, 0] * 255) / 255)
    Image.fromarray(unit * 255).save(tmp_path / "byte_range.tif")  # in [0, 255]: the 8-bit scale
    assert torch.equal(load_image(tmp_path / "byte_range.tif", (1, 8, 8), invert="no"), x)
    odd = unit.copy()
    odd[0, :3] = [np.nan, np.inf, -np.inf]
    odd[1, 0] = 1000.0
    Image.fromarray(odd).save(tmp_path / "odd.tif")
    y = load_image(tmp_path / "odd.tif", (1, 8, 8), invert="no")
    assert torch.isfinite(y).all() and y[0, 0, :3].tolist() == [0.0, 0.0, 0.0] and float(y[0, 1, 0]) == 1.0


def test_png_transparency_decodes_like_an_alpha_channel(tmp_path):
    g = np.full((8, 8), 200, np.uint8)
    g[2:6, 2:6] = 90
    Image.fromarray(g, "L").save(tmp_path / "trns.png", transparency=200)  # tRNS: 200 is transparent
    Image.fromarray(np.stack([g, np.where(g == 200, 0, 255).astype(np.uint8)], -1), "LA").save(tmp_path / "alpha.png")
    rgb = Image.fromarray(g, "L").convert("RGB")
    rgb.save(tmp_path / "trns_rgb.png", transparency=(200, 200, 200))
    expected = load_image(tmp_path / "alpha.png", (1, 8, 8), invert="no")
    assert float(expected[0, 0, 0]) == 0.0 and float(expected[0, 3, 3]) == pytest.approx(90 / 255)
    for name in ("trns.png", "trns_rgb.png"):
        assert torch.equal(load_image(tmp_path / name, (1, 8, 8), invert="no"), expected), name
    sixteen = Image.fromarray(g.astype(np.uint16) * 257)
    sixteen.save(tmp_path / "trns16.png", transparency=200 * 257)
    assert torch.equal(load_image(tmp_path / "trns16.png", (1, 8, 8), invert="no"), expected)


def test_decoding_in_many_threads_keeps_the_bomb_guard_and_the_warning_filters():
    """The server decodes uploads in a thread pool: PIL's decompression-bomb warning must still be an
    error in every thread, and the process's warning filters must come out as they went in."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from gencls.imagefile import decode_image

    # a header announcing 10000 x 10000 pixels: over PIL's warning limit (89 M), under its error limit
    side = 10000
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    warn_bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(buf, "PNG")
    good = buf.getvalue()
    before = list(warnings.filters)

    def one(i):
        data = warn_bomb if i % 3 == 0 else good
        try:
            decode_image(data, SHAPE, max_pixels=200_000_000)
            return "ok"
        except InputError as e:
            return str(e)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(600)))
    assert warnings.filters == before
    assert all(("decompression bomb guard" in g) == (i % 3 == 0) for i, g in enumerate(got)), set(got)
    assert got.count("ok") == 400
