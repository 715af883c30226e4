"""Peak memory of streaming a long t2v video against its length; prints one JSON object.

  python benchmarks/long_video_memory.py --workdir runs/demo/dit [--seconds 10,60,600]
  python benchmarks/long_video_memory.py   # trains the runlocal DiT into a temp dir first

Each length runs `python -m sora_jax.sample --task t2v --seconds S` (9-frame 32x32 windows,
2 solver steps, one latent frame of overlap) in its own child process and reads the child's
max RSS from `os.wait4`, so the figure belongs to that length alone. Streaming holds one
window: peak memory at 600 s should be within 10% of 10 s (issue 39's target).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "A large red circle moving to the right on a black background. The camera is still."


def _child(cmd: list[str]) -> tuple[int, float, float]:
  """(exit code, max RSS in MiB, wall seconds) of one child process."""
  start = time.time()
  with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads it while it runs
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
      log.seek(0)
      sys.exit(f"{' '.join(cmd)} failed:\n{log.read().decode()[-3000:]}")
  return proc.returncode, usage.ru_maxrss / 1024, time.time() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="", help="A DiT run ('' = train runlocal's).")
  parser.add_argument("--seconds", default="10,60,600", help="Lengths, comma-separated.")
  args = parser.parse_args()
  try:
    lengths = [float(s) for s in args.seconds.split(",")]
    assert lengths and all(0 < s <= 3600 for s in lengths)
  except (ValueError, AssertionError):
    parser.error(f"--seconds {args.seconds!r}: expected lengths in (0, 3600] s, e.g. 10,60")
  tmp = tempfile.mkdtemp(prefix="long_video_")
  workdir = args.workdir
  if not workdir:
    workdir = os.path.join(tmp, "dit")
    _child([sys.executable, "-m", "sora_jax.main", "--config",
            f"configs/dit.py:runlocal=True,data_dir={os.path.join(tmp, 'data')}",
            "--workdir", workdir])
  rows = []
  for seconds in lengths:
    out = os.path.join(tmp, f"long_{seconds:g}.mp4")
    _, rss, wall = _child([sys.executable, "-m", "sora_jax.sample", "--workdir", workdir,
                           "--task", "t2v", "--prompt", PROMPT, "--seconds", str(seconds),
                           "--frames", "9", "--height", "32", "--width", "32", "--steps", "2",
                           "--given", "1", "--out", out])
    rows.append({"seconds": seconds, "frames": int(round(seconds * 8)),
                 "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1),
                 "mp4_bytes": os.path.getsize(out)})
  print(json.dumps({
      "benchmark": "long_video_memory", "date": datetime.date.today().isoformat(),
      "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
      "workdir": args.workdir or "runlocal DiT (4 steps)", "rows": rows,
      "peak_ratio_longest_to_shortest": round(rows[-1]["peak_rss_mib"]
                                              / rows[0]["peak_rss_mib"], 3)}, indent=2))


if __name__ == "__main__":
  main()
