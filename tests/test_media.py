"""Every image and video a user has, through `serdab run`: labels equal the whole model on the image as
a viewer (Pillow) shows it; animations and pages as frame sequences; a video's display rotation;
corrupt files skipped with a line saying why, or the run refused naming every one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, ImageSequence

from serdab.cli.app import main
from serdab.onnxrt import make_session
from serdab.runtime.frames import _bounded, open_source, synthetic_frame, to_input, to_pixels
from serdab.runtime.report import top_k
from tests.conftest import chain_of

MODEL = "resnet18"  # three colour channels: a colour mistake changes its labels


def _top5(pixels: np.ndarray) -> list[tuple[int, float]]:
    """Classes and scores (seeded weights rank few classes first: the scores tell images apart)."""
    chain = chain_of(MODEL)
    logits = make_session(chain.model).run(None, {chain.input_name: to_input(pixels, chain.input_shape)})[0]
    return _rounded(top_k(logits, 5))


def _rounded(top5: list[dict]) -> list[tuple[int, float]]:
    """Scores in millionths, to the nearest 2 (the runtime rounds to 6 decimals; stages cut out of the
    model differ from it in the last float bits)."""
    return [(int(c["class"]), round(float(c["score"]) * 5e5)) for c in top5]


def _shown(path: Path) -> list[np.ndarray]:
    """What Pillow shows for each frame (the test's own conversion, written from Pillow's documentation)."""
    with Image.open(path) as image:
        return [np.asarray(ImageOps.exif_transpose(page).convert("RGB")) for page in ImageSequence.Iterator(image)]


def _photo(seed: int) -> Image.Image:
    pixels = synthetic_frame(seed, 96, 128, seed=seed)
    pixels[:, :40] = pixels[:, :40][:, :, ::-1]  # colours that differ per channel: CMYK or channel swaps show
    return Image.fromarray(pixels)


@pytest.fixture
def album(tmp_path: Path) -> Path:
    folder = tmp_path / "album"
    folder.mkdir()
    photo = _photo(1)
    photo.save(folder / "a_rgb.png")
    photo.convert("P").save(folder / "b_palette.gif")
    _photo(2).save(folder / "c_anim.gif", save_all=True, append_images=[_photo(3), _photo(4)], duration=100)
    photo.convert("L").save(folder / "d_grey.png")
    photo.convert("LA").save(folder / "e_grey_alpha.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "f_rgba.png")
    photo.convert("CMYK").save(folder / "g_cmyk.jpg")  # Pillow writes Adobe's (inverted) CMYK
    sideways = photo.transpose(Image.Transpose.ROTATE_90)
    exif = sideways.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown upright as the photo
    sideways.save(folder / "h_exif.jpg", exif=exif.tobytes(), quality=95)
    grey16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "i_grey16.png")
    photo.save(folder / "j_pages.tif", save_all=True, append_images=[_photo(5)])
    return folder


def test_every_image_mode_is_fed_as_pillow_shows_it(album: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.jsonl"
    code = main(
        ["run", MODEL, "--cluster", "paper", "--native", "--chunk", "4", "--input", str(album), "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = []
    for path in sorted(album.iterdir()):
        shown = _shown(path)
        if path.name == "i_grey16.png":  # Pillow's convert clips 16 bits at 255; a viewer scales them
            shown = [np.asarray(Image.open(album / "d_grey.png").convert("RGB"))]
        names = [path.name] if len(shown) == 1 else [f"{path.name}#{i}" for i in range(len(shown))]
        expected += [(name, _top5(pixels)) for name, pixels in zip(names, shown, strict=True)]
    got = [(line["source"], _rounded(line["top5"])) for line in lines]
    assert [line["frame"] for line in lines] == list(range(len(expected)))
    assert got == expected
    # seeded ImageNet weights answer most images alike, so the pixels each frame carries are checked too
    shape = chain_of(MODEL).input_shape
    fed = {f.name: f.pixels for f in open_source(str(album), shape).frames()}
    for path in sorted(album.iterdir()):
        shown = _shown(path) if path.name != "i_grey16.png" else [np.asarray(Image.open(album / "d_grey.png"))]
        for i, pixels in enumerate(shown):
            name = path.name if len(shown) == 1 else f"{path.name}#{i}"
            assert np.array_equal(fed[name], to_pixels(pixels, shape)), name
    assert not np.array_equal(fed["c_anim.gif#0"], fed["c_anim.gif#2"])  # three frames, not the first three times
    stored = np.asarray(Image.open(album / "h_exif.jpg").convert("RGB"))  # as stored: sideways
    assert not np.array_equal(fed["h_exif.jpg"], to_pixels(stored, shape))
    cmyk_as_rgb = np.asarray(Image.open(album / "g_cmyk.jpg"))[..., :3]  # what dropping K would feed
    assert np.abs(fed["g_cmyk.jpg"].astype(int) - to_pixels(cmyk_as_rgb, shape)).mean() > 20


def test_a_video_is_fed_with_its_display_rotation(tmp_path: Path, capsys) -> None:
    import av

    video = tmp_path / "portrait.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as a phone held upright records it
        for i in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(_photo(i)), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(video)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    upright = [_top5(np.rot90(pixels, 1)) for pixels in decoded]
    shape = chain_of(MODEL).input_shape
    fed = [f.pixels for f in open_source(str(video), shape).frames()]
    assert all(np.array_equal(f, to_pixels(np.rot90(p, 1), shape)) for f, p in zip(fed, decoded, strict=True))
    assert not np.array_equal(fed[0], to_pixels(decoded[0], shape))  # the rotation matters: this test can fail
    out = tmp_path / "r.jsonl"
    code = main(["run", MODEL, "--cluster", "paper", "--native", "--input", str(video), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [_rounded(line["top5"]) for line in lines] == upright


@pytest.fixture
def with_corrupt(tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    _photo(1).save(folder / "a.png")
    _photo(2).save(folder / "b.jpg")
    (folder / "c.jpg").write_bytes((folder / "b.jpg").read_bytes()[:300])  # cut off: not decodable
    _photo(3).save(folder / "d.png")
    (folder / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return folder


def test_corrupt_files_are_skipped_with_a_line_saying_why(with_corrupt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.jsonl"
    code = main(["run", MODEL, "--cluster", "paper", "--native", "--input", str(with_corrupt), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["source"] for line in lines] == ["a.png", "b.jpg", "c.jpg", "d.png", "e.png"]
    assert [("error" in line, "top5" in line) for line in lines] == [
        (False, True),
        (False, True),
        (True, False),
        (False, True),
        (True, False),
    ]
    assert lines[2]["error"].startswith("cannot decode") and lines[3]["top5"]


def test_corrupt_files_refuse_the_run_naming_every_one(with_corrupt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.jsonl"
    args = ["--input", str(with_corrupt), "--out", str(out), "--bad-input", "refuse"]
    code = main(["run", MODEL, "--cluster", "paper", "--native", *args])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "2 bad image file(s), nothing was run" in err and "c.jpg" in err and "e.png" in err
    assert not out.exists()


def test_a_decode_that_hangs_is_bad_input_not_a_hung_run() -> None:
    def hanging():
        yield "first.gif#0", np.zeros((4, 4, 3), np.uint8)
        time.sleep(5)
        yield "first.gif#1", np.zeros((4, 4, 3), np.uint8)

    started = time.monotonic()
    items = list(_bounded("first.gif", hanging, timeout_s=0.3))
    assert time.monotonic() - started < 2
    assert items[0][0] == "first.gif#0" and items[1] == ("first.gif#1", "cannot decode: no frame after 0 s")
