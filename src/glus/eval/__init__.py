"""glus.eval: scoring predicted masks exactly as the official benchmarks do.

* :mod:`glus.eval.metrics` - J, F (DAVIS toolkit, bit-exact and windowed) and ReVOS's A, R;
* :mod:`glus.eval.predictions` - reading predicted mask PNGs as ``cv2.IMREAD_GRAYSCALE`` does, fast;
* :mod:`glus.eval.scoring` - per-frame scores of every expression of a split, in parallel;
* :mod:`glus.eval.protocols` - MeViS / Ref-YouTube-VOS, Ref-DAVIS17 (VISA) and ReVOS aggregation, ``evaluate``;
* :mod:`glus.eval.davis_unsupervised` - Ref-DAVIS17 as ReferFormer scores it;
* :mod:`glus.eval.report`, :mod:`glus.eval.files` - ``glus evaluate`` outputs (result JSON, CSVs, headline table);
* :mod:`glus.eval.example` - the packaged example split;
* :mod:`glus.eval.submission` - ``glus submit``: completeness checks and server zips.

Nothing here imports torch.
"""
