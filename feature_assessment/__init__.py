"""Model Feature Assessment (MFA), the first stage of X2-DFD: which forgery cues does the MLLM already see?

    x2dfd assess DATA --model llava-hf/llava-1.5-7b-hf --out mfa/

Modules: ``cues`` (the cue bank, ``prompts/cues.yaml``), ``scoring`` (exact, prefix-cached P(yes) per
face and cue), ``ranking`` (AUC / balanced accuracy / bootstrap CIs per cue and region, chart),
``cache`` (per-face scores, the resume cache), ``generate`` (``--generate-cues``), ``assess`` (the command).

What ``x2dfd finetune`` reads: ``mfa/ranking.json`` (``cues``: ranked rows with ``id``, ``rank``,
``question``, ``present``, ``absent``, metrics and ``flags``; ``setting.id``) and the per-face P(yes)
via ``feature_assessment.cache.read_scores("mfa/")`` -> ``{sha256: ImageScores(path, label, p_yes={cue_id: p})}``.
"""
