"""Migration tools: move a Linen model to ``bridge`` and prove each step.

``check_parity`` compares a Linen model and its ``bridge`` port (outputs, gradients, train
and eval modes, the first layer where sown intermediates diverge); see
``bridge.migrate.parity``.
"""

from bridge.migrate.parity import Check, ParityReport, check_parity, sum_outputs
