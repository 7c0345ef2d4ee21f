"""Network transforms with torch.fx: :func:`~dsa.transform.merge.apply_plan` (the merge-ready network) and
:func:`~dsa.transform.merge.merge` (one conv per segment, verified numerically); the relocated-padding convs they
build (:mod:`.layers`)."""
