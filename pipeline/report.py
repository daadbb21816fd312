"""krea-report (built in its own issue)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipeline.entry import CONF_DIR, report_errors
from pipeline.errors import PipelineError


def _not_built() -> int:
    raise PipelineError("krea-report is not built yet")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    """Console script `krea-report`."""
    report_errors("krea-report", _not_built)


if __name__ == "__main__":
    main()
