"""``python -m facefit.idloss PHOTOS --net NAME``: measure a network's cosine scale (:mod:`.scales`)."""
from .scales import main

raise SystemExit(main())
