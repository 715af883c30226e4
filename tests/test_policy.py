"""The prompt policy: word lists (whole words, any case, phrases across punctuation), files,
pluggable classifiers, and the one-line refusal the CLIs turn it into."""
import pytest

from sora_jax.inference import policy


def _refuse_red(prompt):  # a classifier for the module:function form
  return "red is reserved" if "red" in prompt else None


def test_default_list_refuses_whole_words_in_any_case_and_spacing():
  check = policy.load(policy.DEFAULT)
  assert check("A large red circle moving to the right.") is None
  assert "csam" in check("some CSAM here").lower()
  assert check("Child  Sexual-Abuse material") is not None  # spacing, punctuation
  assert check("a csamx shape") is None  # whole words only
  with pytest.raises(ValueError, match=r"Prompt 2 \('a beheading'\) is refused.*'beheading'"):
    policy.check(["a blue square", "a beheading"], check)


def test_word_list_file_classifier_and_off(tmp_path):
  words = tmp_path / "words.txt"
  words.write_text("# comment line\nblue square  # trailing comment\n\n")
  check = policy.load(str(words))
  assert check("A small Blue Square.") is not None and check("a blue circle") is None
  policy.check(["anything at all, csam included"], policy.load(policy.OFF))  # no policy
  classifier = policy.load(f"{__name__}:_refuse_red")
  with pytest.raises(ValueError, match="red is reserved"):
    policy.check(["a red circle"], classifier)
  (tmp_path / "empty.txt").write_text("# nothing\n")
  for spec, message in ((str(tmp_path / "empty.txt"), "holds no words"),
                        ("no_such_file.txt", "no such file"),
                        ("no_such_module:check", "cannot load the classifier")):
    with pytest.raises(ValueError, match=message):
      policy.load(spec)
