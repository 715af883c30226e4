"""Tests of the video-folder tfds builder: decoding, clips, sizes, splits, report, storage,
workers, CLI."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage
import tensorflow_datasets as tfds

from data_pipelines import features
from data_pipelines import pipeline
from data_pipelines.video_folder import builder as builder_lib
from data_pipelines.video_folder import BadInputError, VideoFolder, build, make_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((64, 64), (48, 80))
USABLE = ("moving.mp4", "portrait/tall.mp4", "fade.gif", "still.png")
# file -> why it is skipped (a word the reason must contain).
BAD = {"corrupt.mp4": "unreadable", "truncated.mp4": "unreadable", "tiny.mp4": "too short",
       "missing.mp4": "missing", "notes.txt": "unsupported", "uncaptioned.jpg": "no line"}
# Generation order = captions.jsonl order: (file, caption, short caption, clip shapes).
EXPECTED = (
    ("moving.mp4", "a white square slides right", "square", [(17, 48, 80, 3)] * 2),
    ("portrait/tall.mp4", "a tall video with a stripe", "", [(17, 64, 64, 3)]),
    ("fade.gif", "a gif getting brighter", "", [(5, 64, 64, 3)]),
    ("still.png", "a red picture", "", [(1, 48, 80, 3)]),
)


def _moving_square(frames=40, height=96, width=128) -> np.ndarray:
  """uint8 [T, H, W, 3]: a white 20x20 square moving 2 px a frame to the right."""
  video = np.zeros((frames, height, width, 3), np.uint8)
  for t in range(frames):
    video[t, 30:50, 10 + 2 * t:30 + 2 * t] = 255
  return video


def _write_folder(folder) -> None:
  """Writes the test folder: usable media, bad files and captions.jsonl."""
  os.makedirs(folder / "portrait")
  iio.imwrite(folder / "moving.mp4", _moving_square(), plugin="FFMPEG", fps=10)
  tall = np.zeros((20, 128, 96, 3), np.uint8)
  tall[:, :, 20:30] = 255  # a vertical stripe over the full height
  iio.imwrite(folder / "portrait/tall.mp4", tall, plugin="FFMPEG", fps=10)
  gif = np.stack([np.full((64, 64, 3), 40 * i, np.uint8) for i in range(6)])
  iio.imwrite(folder / "fade.gif", gif, duration=100, loop=0)
  iio.imwrite(folder / "still.png", np.full((40, 60, 3), (200, 30, 30), np.uint8))
  iio.imwrite(folder / "uncaptioned.jpg", np.zeros((32, 32, 3), np.uint8))
  iio.imwrite(folder / "tiny.mp4", _moving_square(frames=3), plugin="FFMPEG", fps=10)
  (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
  data = (folder / "moving.mp4").read_bytes()
  (folder / "truncated.mp4").write_bytes(data[:len(data) // 2])
  (folder / "notes.txt").write_text("not media")
  shutil.copy(folder / "moving.mp4", folder / ".hidden.mp4")  # hidden: never seen
  lines = [{"file": f, "caption": c, **({"short_caption": s} if s else {})}
           for f, c, s, _ in EXPECTED]
  lines[1:1] = [{"file": f, "caption": f"caption of {f}"} for f in
                ("corrupt.mp4", "truncated.mp4", "tiny.mp4", "missing.mp4", "notes.txt")]
  (folder / "captions.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("videos")
  _write_folder(path)
  return path


def _build(folder, data_dir, workers=0, **kwargs):
  """(builder, report) of `folder` built in process (workers=0) with make_config(**kwargs)."""
  config = make_config(folder, **kwargs)
  report = build(config, data_dir, workers=workers)
  return VideoFolder(config=config, data_dir=data_dir), report


def _records(builder, split="train"):
  """The split's records as every consumer reads them: `video` decoded."""
  return list(pipeline.source_from_builder(builder, split).records)


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  """(builder, report) of the folder built without a validation split (mp4 storage)."""
  return _build(folder, tmp_path_factory.mktemp("tfds"), frames=17, sizes=SIZES)


@pytest.fixture(scope="module")
def built_raw(folder, tmp_path_factory):
  """As `built`, with raw storage (exact frames)."""
  return _build(folder, tmp_path_factory.mktemp("tfds_raw"), frames=17, sizes=SIZES,
                storage="raw")


def test_clips_shapes_and_captions(built):
  builder, _ = built
  train = _records(builder)
  want = [(c, s, shape) for _, c, s, shapes in EXPECTED for shape in shapes]
  assert len(train) == len(want)
  for record, (caption, short, shape) in zip(train, want):
    assert record["video"].dtype == np.uint8 and record["video"].shape == shape
    assert record["caption"].decode() == caption
    assert record["short_caption"].decode() == short
  assert list(builder.info.splits) == ["train"]


def test_recorded_sizes_match_records(built):
  builder, _ = built
  train = _records(builder)
  shapes = np.array([r["video"].shape[:3] for r in train])
  np.testing.assert_array_equal(features.split_sizes(builder.info, "train"), shapes)
  # Persisted: a reader that knows nothing of the builder sees the same sizes.
  reread = tfds.builder_from_directory(builder.data_dir)
  np.testing.assert_array_equal(features.split_sizes(reread.info, "train"), shapes)
  by_name = tfds.data_source(builder.info.full_name.rsplit("/", 1)[0], split="train",
                             data_dir=builder.data_dir_root)
  assert len(by_name) == len(shapes)


@pytest.mark.parametrize("storage", ["mp4", "raw"])
def test_frames_are_plausible(built, built_raw, storage):
  train = _records((built if storage == "mp4" else built_raw)[0])
  first, second = train[0]["video"], train[1]["video"]
  # The square's centroid moves right by 2 px * (80 / 128) a frame, across both clips.
  xs = np.concatenate([_centroid_x(first), _centroid_x(second)])
  np.testing.assert_allclose(np.diff(xs), 1.25, atol=0.5)
  assert first.max() > 200 and np.median(first) < 20
  # The portrait video is not transposed: a full-height stripe near the left edge.
  stripe = train[2]["video"][0].mean(axis=(0, 2))  # [W]
  assert stripe[14:19].min() > 200 and stripe[30:].max() < 30
  gif = train[3]["video"].mean(axis=(1, 2, 3))  # [T]: the gif gets brighter
  assert np.all(np.diff(gif) > 20)
  np.testing.assert_allclose(train[4]["video"].mean(axis=(0, 1, 2)), (200, 30, 30), atol=3)


def _centroid_x(clip: np.ndarray) -> np.ndarray:
  """x centroid of the bright pixels of each frame of clip [T, H, W, 3] -> [T]."""
  bright = clip.mean(-1) > 128  # [T, H, W]
  cols = np.arange(clip.shape[2])
  return (bright * cols).sum(axis=(1, 2)) / bright.sum(axis=(1, 2))


def test_report_names_every_bad_file(built):
  builder, report = built
  assert report == builder_lib.load_report(builder.data_dir)
  assert os.path.isfile(os.path.join(builder.data_dir, "build_report.json"))
  assert report["files_seen"] == len(USABLE) + len(BAD)
  assert report["files_used"] == len(USABLE)
  assert report["files_skipped"] == len(BAD)
  assert report["clips"] == {"train": 5}
  assert report["clip_sizes"]["train"] == {"17x48x80": 2, "17x64x64": 1, "5x64x64": 1,
                                           "1x48x80": 1}
  reasons = {s["file"]: s["reason"] for s in report["skipped"]}
  assert sorted(reasons) == sorted(BAD)
  for file, word in BAD.items():
    assert word in reasons[file], (file, reasons[file])
  assert report["partial"] == []


@pytest.mark.parametrize("frames, stride, lengths", [
    (17, 2, [17]),  # 40 frames -> 20 -> one clip, tail of 3 dropped
    (17, 3, [13]),  # 14 frames < T: the longest 4k+1 prefix
    (9, 1, [9, 9, 9, 9]),
    (1, 10, [1, 1, 1, 1]),  # T = 1: every kept frame is an image clip
])
def test_iter_clips_stride_and_short_videos(folder, frames, stride, lengths):
  clips = list(builder_lib.iter_clips(str(folder / "moving.mp4"), frames, SIZES, stride))
  assert [c.shape for c in clips] == [(t, 48, 80, 3) for t in lengths]


def test_choose_size_closest_aspect():
  sizes = ((64, 64), (48, 80), (80, 48))
  assert builder_lib.choose_size(1080, 1920, sizes) == (48, 80)
  assert builder_lib.choose_size(1920, 1080, sizes) == (80, 48)
  assert builder_lib.choose_size(500, 520, sizes) == (64, 64)
  assert builder_lib.choose_size(100, 100, ((32, 64), (64, 32))) == (32, 64)  # tie: first


def test_file_failing_part_way_keeps_its_clips(folder, tmp_path, monkeypatch):
  real = builder_lib.iter_clips

  def fail_after_first_clip(path, *args):
    clips = real(path, *args)
    if path.endswith("moving.mp4"):
      yield next(clips)
      raise RuntimeError("decoder died\nmore detail")
    yield from clips

  monkeypatch.setattr(builder_lib, "iter_clips", fail_after_first_clip)
  report = build(make_config(folder, sizes=SIZES), tmp_path, workers=0)  # patch in process
  assert report["clips"] == {"train": 4} and report["files_used"] == len(USABLE)
  assert report["partial"] == [{"file": "moving.mp4", "reason":
                                "kept 1 clip(s), then RuntimeError: decoder died"}]


def _expected_validation(fraction: float) -> set[str]:
  """The usable files the documented rule holds out for validation."""
  captioned = [f for f, *_ in EXPECTED] + ["corrupt.mp4", "truncated.mp4", "tiny.mp4",
                                           "missing.mp4", "notes.txt"]
  held = set()
  for file in sorted(captioned, key=builder_lib.split_score):
    if held & set(USABLE) and builder_lib.split_score(file) >= fraction:
      break
    held.add(file)
  return held & set(USABLE)


# Scores (split_score): missing.mp4 0.096 < tall 0.223 < moving 0.225 < still 0.239 <
# fade.gif 0.505. At 0.001 no file scores below the fraction: validation walks past the
# missing file and stops at the first one that gives a clip.
@pytest.mark.parametrize("fraction, held_out", [
    (0.3, {"portrait/tall.mp4", "moving.mp4", "still.png"}),
    (0.001, {"portrait/tall.mp4"}),
])
def test_validation_split(folder, tmp_path, fraction, held_out):
  builder, report = _build(folder, tmp_path, sizes=SIZES, validation_fraction=fraction)
  assert set(report["validation_files"]) == _expected_validation(fraction) == held_out
  assert sum(report["clips"].values()) == 5
  held_captions = {c for f, c, *_ in EXPECTED if f in report["validation_files"]}
  for split in ("train", "validation"):
    records = _records(builder, split)
    assert len(records) == report["clips"][split]
    captions = {r["caption"].decode() for r in records}
    assert (captions <= held_captions) == (split == "validation")
    assert len(features.split_sizes(builder.info, split)) == len(records)


def test_validation_taking_every_usable_file_raises(folder, tmp_path):
  with pytest.raises(BadInputError, match="no usable clip for split 'train'.*lower "
                     "validation_fraction"):
    build(make_config(folder, sizes=SIZES, validation_fraction=0.6), tmp_path, workers=0)


def _write_captions(folder, text: str):
  os.makedirs(folder, exist_ok=True)
  (folder / "captions.jsonl").write_text(text)
  return folder


@pytest.mark.parametrize("make, match", [
    (lambda p: make_config(p, frames=16), "frames T=16"),
    (lambda p: make_config(p, sizes=((50, 64),)), "height=50"),
    (lambda p: make_config(p, sizes=((64,),)), "pairs"),
    (lambda p: make_config(p, validation_fraction=1.0), "validation_fraction=1.0"),
    (lambda p: make_config(p, frame_stride=0), "frame_stride=0"),
])
def test_bad_config_raises(tmp_path, make, match):
  with pytest.raises(ValueError, match=match):
    make(tmp_path)


@pytest.mark.parametrize("captions, match", [
    (None, "captions.jsonl' not found"),
    ('{"file": "a.mp4", "caption": "x"}\nnot json\n', r"captions.jsonl:2: not valid JSON"),
    ('{"file": "a.mp4"}\n', r":1: 'caption' missing.*Line: \{\"file\": \"a.mp4\"\}"),
    ('["a.mp4", "x"]\n', r":1: each line must be a JSON object"),
    ('{"file": "../a.mp4", "caption": "x"}\n', "inside the folder"),
    ('{"file": "a.mp4", "caption": "x"}\n\n{"file": "a.mp4", "caption": "y"}\n',
     r":3: 'a.mp4' is already captioned on line 1"),
    ("\n", "no entries"),
])
def test_bad_folder_raises_before_decoding(tmp_path, monkeypatch, captions, match):
  monkeypatch.setattr(builder_lib, "iter_clips", _no_decoding)
  folder = tmp_path / "in"
  os.makedirs(folder)
  if captions is not None:
    _write_captions(folder, captions)
  with pytest.raises(BadInputError, match=match):
    build(make_config(folder), tmp_path / "out", workers=0)  # in process: sees the patch
  assert not os.path.exists(tmp_path / "out" / "video_folder" / "in_t17_64x64" /
                            str(VideoFolder.VERSION))


def test_missing_folder_raises(tmp_path):
  with pytest.raises(BadInputError, match="does not exist"):
    build(make_config(tmp_path / "nope"), tmp_path / "out")


def _no_decoding(*args, **kwargs):
  raise AssertionError("decoded a file despite bad input")


def test_all_files_bad_raises_clear_error(tmp_path):
  folder = _write_captions(tmp_path / "in", '{"file": "bad.mp4", "caption": "x"}\n')
  (folder / "bad.mp4").write_bytes(b"\x00" * 100)
  with pytest.raises(BadInputError, match="no usable clip.*bad.mp4: unreadable"):
    build(make_config(folder), tmp_path / "out", workers=0)


# --- Storage and workers ---------------------------------------------------------------
# Tolerances of the mp4 clips against the raw build's (the same decoded frames), measured
# with imageio-ffmpeg's ffmpeg 9.0.2 at CRF 10, yuv444p: the flat clips of `folder` are
# off by mean 0.02, max 12 (at the moving square's edges) of 255; the textured clips of
# `textured` by mean 1.58, max 25. Images (T = 1, PNG) are exact.
FLAT_MAE, FLAT_MAX = 0.1, 16
TEXTURED_MAE, TEXTURED_MAX = 2.0, 32


def _textured_video(seed: int, frames: int = 40, height: int = 96,
                    width: int = 128) -> np.ndarray:
  """uint8 [T, H, W, 3]: a smooth random texture panning 2 px a frame, a moving block and
  mild noise; detail that zlib barely shrinks and H.264 does, as in camera footage."""
  rng = np.random.default_rng(seed)
  base = ndimage.gaussian_filter(rng.random((height, width + 2 * frames, 3)), (2.5, 2.5, 0))
  base = (base - base.min()) / np.ptp(base) * 255
  video = np.stack([base[:, 2 * t:2 * t + width] for t in range(frames)])
  for t in range(frames):
    video[t, 30:50, 10 + 2 * t:30 + 2 * t] = (240, 200, 60)
  video += rng.normal(0, 1, video.shape)
  return np.clip(video, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
  """{storage: (builder, report)} of a folder of two textured videos and an image."""
  folder = tmp_path_factory.mktemp("textured")
  rows = []
  for k in range(2):
    iio.imwrite(folder / f"t{k}.mp4", _textured_video(k), plugin="FFMPEG", fps=10,
                quality=9)
    rows.append({"file": f"t{k}.mp4", "caption": f"texture {k}"})
  iio.imwrite(folder / "image.png", _textured_video(2, frames=1)[0])
  rows.append({"file": "image.png", "caption": "a textured image"})
  (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return {storage: _build(folder, tmp_path_factory.mktemp(f"textured_{storage}"),
                          sizes=SIZES, storage=storage) for storage in ("mp4", "raw")}


def _same_but_storage(mp4_report: dict, raw_report: dict) -> None:
  """The reports agree on everything but the dataset name and the storage."""
  strip = lambda r: {**r, "dataset": None, "config": {**r["config"], "storage": None}}
  assert strip(mp4_report) == strip(raw_report)
  assert (mp4_report["config"]["storage"], raw_report["config"]["storage"]) == ("mp4", "raw")
  name, version = mp4_report["dataset"].rsplit("/", 1)  # video_folder/<config>/<version>
  assert raw_report["dataset"] == f"{name}_raw/{version}"


def _errors(mp4_builder, raw_builder) -> list[np.ndarray]:
  """Per clip, |mp4 - raw| as int [T, H, W, 3]; checks shapes, captions and order first."""
  mp4, raw = _records(mp4_builder), _records(raw_builder)
  assert len(mp4) == len(raw)
  errors = []
  for a, b in zip(mp4, raw):
    assert a["video"].dtype == np.uint8 and a["video"].shape == b["video"].shape
    assert (a["caption"], a["short_caption"]) == (b["caption"], b["short_caption"])
    errors.append(np.abs(a["video"].astype(int) - b["video"]))
  return errors


def test_mp4_storage_matches_raw_within_tolerance(built, built_raw, textured):
  _same_but_storage(built[1], built_raw[1])
  _same_but_storage(textured["mp4"][1], textured["raw"][1])
  flat = _errors(built[0], built_raw[0])
  assert np.mean(np.concatenate([e.ravel() for e in flat])) < FLAT_MAE
  assert max(e.max() for e in flat) <= FLAT_MAX
  tex = _errors(textured["mp4"][0], textured["raw"][0])
  videos = np.concatenate([e.ravel() for e in tex if e.shape[0] > 1])
  print(f"textured mp4 vs raw: mean abs error {videos.mean():.2f}, max {videos.max()}")
  assert videos.mean() < TEXTURED_MAE and videos.max() <= TEXTURED_MAX
  assert all(e.max() == 0 for e in flat + tex if e.shape[0] == 1)  # images: PNG, exact
  # The stored records differ: encoded bytes against zlib frames.
  assert features.ENCODED_KEY in built[0].info.features
  assert "video" in built_raw[0].info.features


def test_decoded_records_survive_pickling(built):
  """grain's spawned workers unpickle the records: they must decode there too."""
  records = pipeline.source_from_builder(built[0], "train").records
  assert isinstance(records, pipeline.DecodedRecords)
  copy = pickle.loads(pickle.dumps(records))
  assert len(copy) == len(records)
  np.testing.assert_array_equal(copy[1]["video"], records[1]["video"])


def _stored_bytes(builder) -> int:
  return sum(os.path.getsize(os.path.join(builder.data_dir, f))
             for f in os.listdir(builder.data_dir) if ".array_record" in f)


def test_mp4_storage_is_smaller(textured):
  mp4, raw = _stored_bytes(textured["mp4"][0]), _stored_bytes(textured["raw"][0])
  print(f"ArrayRecord bytes: raw {raw}, mp4 {mp4}, raw / mp4 = {raw / mp4:.1f}")
  assert mp4 * 2 < raw  # measured 4.0x (files come in 64 KiB steps; the records 8x)


def test_parallel_build_matches_in_process(folder, tmp_path):
  # A validation fraction that makes validation walk past files until one gives a clip,
  # while the workers decode files ahead of that decision.
  kwargs = dict(sizes=SIZES, validation_fraction=0.001)
  serial, serial_report = _build(folder, tmp_path / "serial", workers=0, **kwargs)
  pooled, pooled_report = _build(folder, tmp_path / "pooled", workers=2, **kwargs)
  assert pooled_report == serial_report
  for split in ("train", "validation"):
    a, b = serial.as_data_source(split), pooled.as_data_source(split)
    assert len(a) == len(b) == serial_report["clips"][split]
    for x, y in zip(a, b):
      assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    np.testing.assert_array_equal(features.split_sizes(serial.info, split),
                                  features.split_sizes(pooled.info, split))


def test_config_names_and_storage():
  assert make_config("/v/My Clips", sizes=SIZES).name == "my_clips_t17_64x64_48x80"
  assert make_config("/v/clips", storage="raw").name == "clips_t17_64x64_raw"
  with pytest.raises(BadInputError, match="storage='webm' must be one of"):
    make_config("/v/clips", storage="webm")
  with pytest.raises(BadInputError, match="workers=-1"):
    VideoFolder(config=make_config("/v/clips"), data_dir="/tmp", workers=-1)


def test_decode_checks_the_recorded_size():
  video = _textured_video(0, frames=5, height=32, width=48)
  data = features.encode_video(video)
  assert features.decode_video(data, (5, 32, 48)).shape == (5, 32, 48, 3)
  with pytest.raises(ValueError, match="not 5x48x32.*stale"):
    features.decode_video(data, (5, 48, 32))
  with pytest.raises(ValueError, match="not 9x32x48.*stale"):
    features.decode_video(data, (9, 32, 48))
  image = features.encode_video(video[:1])
  np.testing.assert_array_equal(features.decode_video(image, (1, 32, 48)), video[:1])


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "data_pipelines.video_folder.build", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(folder, tmp_path):
  result = _run_cli(f"--folder={folder}", f"--data_dir={tmp_path}", "--frames=17",
                    "--sizes=64x64,48x80", "--validation_fraction=0.3", "--storage=raw",
                    "--workers=2")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert sum(report["clips"].values()) == 5 and set(report["clips"]) == {"train", "validation"}
  assert sorted(s["file"] for s in report["skipped"]) == sorted(BAD)
  assert report["config"]["storage"] == "raw"
  name = report["dataset"].rsplit("/", 1)[0]  # video_folder/<config>
  assert name.endswith("_raw")
  train = tfds.data_source(name, split="train", data_dir=tmp_path)
  assert len(train) == report["clips"]["train"] and train[0]["video"].dtype == np.uint8


def test_cli_bad_input(folder, tmp_path):
  result = _run_cli(f"--folder={folder}", f"--data_dir={tmp_path}", "--frames=16")
  assert result.returncode == 2
  assert "frames T=16" in result.stderr and "4k+1" in result.stderr
  result = _run_cli(f"--folder={folder}", f"--data_dir={tmp_path}", "--sizes=64by64")
  assert result.returncode == 2 and "--sizes='64by64'" in result.stderr
  result = _run_cli(f"--folder={folder}", f"--data_dir={tmp_path}", "--storage=webm")
  assert result.returncode == 2 and "mp4" in result.stderr and "raw" in result.stderr
  result = _run_cli(f"--folder={folder}", f"--data_dir={tmp_path}", "--workers=-1")
  assert result.returncode == 2 and "workers=-1" in result.stderr
