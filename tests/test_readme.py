"""The README opens with the two commands, and CI runs the test one."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_commands_and_ci_agree():
  text = (ROOT / "README.md").read_text()
  blocks = [b.split("```", 1)[0].strip() for b in text.split("```bash\n")[1:3]]
  assert blocks[0] == "pip install -e . && python -m jax_fa3.examples.demo"
  assert blocks[1] == "bash scripts/test.sh"
  ci = (ROOT / ".ci" / "run").read_text()
  assert "\nbash scripts/test.sh\n" in ci
