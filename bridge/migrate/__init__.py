"""Migration tools: move a Linen model to ``bridge`` and prove each step.

``check_parity`` compares a Linen model and its ``bridge`` port (outputs, gradients, train
and eval modes, the first layer where sown intermediates diverge); see
``bridge.migrate.parity``.
"""

from bridge.migrate.checkpoint import restore_checkpoint, save_checkpoint
from bridge.migrate.errors import VariableMatchError
from bridge.migrate.integrity import ChecksumError
from bridge.migrate.linen_checkpoint import restore_linen_checkpoint
from bridge.migrate.linen_variables import (
  linen_to_state,
  load_linen_variables,
  state_to_linen,
  to_linen_variables,
)
from bridge.migrate.matching import match_report, match_variables
from bridge.migrate.parity import Check, ParityReport, check_parity, sum_outputs
from bridge.migrate.rename import rename_path
