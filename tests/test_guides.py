"""Every ```python block of every guide in migration_guides/ runs, in order, per guide."""

import pathlib
import re

import pytest

GUIDES = sorted((pathlib.Path(__file__).parent.parent / 'migration_guides').glob('*.md'))
BLOCK = re.compile(r'^```python\n(.*?)^```', re.DOTALL | re.MULTILINE)


def test_there_are_guides():
  assert GUIDES, 'migration_guides/ has no guides'


@pytest.mark.parametrize('guide', GUIDES, ids=lambda p: p.name)
def test_guide_code_runs(guide):
  blocks = BLOCK.findall(guide.read_text())
  assert blocks, f'{guide.name} has no python code blocks'
  namespace = {'__name__': f'guide_{guide.stem}'}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f'{guide.name}[block {i}]', 'exec'), namespace)
    except Exception as e:
      raise AssertionError(f'{guide.name}, code block {i} failed: {e!r}\n{block}') from e
