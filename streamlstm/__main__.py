"""``python -m streamlstm`` runs the same command as ``streamlstm``."""

from streamlstm.cli import main

raise SystemExit(main())
