#!/usr/bin/env bash
# Reproduce version 7 of saved_models/tfdeblend_cpu, the staged model shipped before version 8,
# from scratch on a 2-core CPU machine (about 4.4 hours of training in ten runs, about 55 minutes
# of simulation and residuals). The shipped model is now version 8: scripts/reproduce_default_model.sh.
# Version 7 is in the git history (git checkout 463bd8d -- saved_models/tfdeblend_cpu/7). Every step is a plain tfdeblend
# command; rerunning the script skips finished steps and resumes interrupted ones (simulation
# finishes missing shards, training resumes from its backup/).
set -euo pipefail
DATA=${DATA:-work_data}
RUNS=${RUNS:-runs}
MODEL=${MODEL:-saved_models/tfdeblend_v7}

# a TFRecord dataset is done when every shard is (its manifest is written first)
source "$(dirname "$0")/recipe_steps.sh"  # complete DIR

# 1. data from the built-in catalog (each set has its own seed: no test blend is a training blend)
complete "$DATA/deblender" || tfdeblend simulate deblender --out "$DATA/deblender" --preset cpu --seed 1
complete "$DATA/classifier" || tfdeblend simulate classifier --out "$DATA/classifier" --preset cpu --seed 2
complete "$DATA/deblender_big" || tfdeblend simulate deblender --count 16000 --out "$DATA/deblender_big" --seed 6
complete "$DATA/classifier_big" || tfdeblend simulate classifier --count 40000 --out "$DATA/classifier_big" --seed 5
complete "$DATA/mine2" || tfdeblend simulate deblender --count 16000 --out "$DATA/mine2" --seed 7
complete "$DATA/mine3" || tfdeblend simulate test --n-gal 3 --count 8000 --out "$DATA/mine3" --seed 8
[ -f "$DATA/test2/blends.fits" ] || tfdeblend simulate test --n-gal 2 --count 1000 --format fits --out "$DATA/test2" --seed 3
[ -f "$DATA/test3/blends.fits" ] || tfdeblend simulate test --n-gal 3 --count 1000 --format fits --out "$DATA/test3" --seed 4

# 2. version 2: phase 1 (the deblender in three stages, the classifier in two), then phase 2
[ -f "$RUNS/rdn_cpu/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender" --out "$RUNS/rdn_cpu" --config configs/cpu_deblender.yaml
[ -f "$RUNS/rdn_cpu_ft1/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender" --out "$RUNS/rdn_cpu_ft1" --config configs/cpu_deblender_ft1.yaml --init-from "$RUNS/rdn_cpu"
[ -f "$RUNS/rdn_cpu_v2/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender" --out "$RUNS/rdn_cpu_v2" --config configs/cpu_deblender_ft2.yaml --init-from "$RUNS/rdn_cpu_ft1"
[ -f "$RUNS/vgg_cpu/classifier.keras" ] || tfdeblend train --phase 1 --net classifier "$DATA/classifier" --out "$RUNS/vgg_cpu" --config configs/cpu_classifier.yaml
[ -f "$RUNS/vgg_cpu_ft/classifier.keras" ] || tfdeblend train --phase 1 --net classifier "$DATA/classifier" --out "$RUNS/vgg_cpu_ft" --config configs/cpu_classifier_ft.yaml --init-from "$RUNS/vgg_cpu"
[ -f "$RUNS/joint_cpu_v2/deblender.keras" ] || tfdeblend train --phase 2 "$DATA/deblender" --deblender "$RUNS/rdn_cpu_v2" --classifier "$RUNS/vgg_cpu_ft" --out "$RUNS/joint_cpu_v2" --config configs/cpu_joint_v2.yaml

# 3. version 3: the version-2 deblender (after phase 2) fine-tuned on 16,000 new blends; the
#    version-2 classifier is kept (docs/model_history.md says why)
[ -f "$RUNS/rdn_cpu_v3/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender_big" --out "$RUNS/rdn_cpu_v3" --config configs/cpu_deblender_ft3.yaml --init-from "$RUNS/joint_cpu_v2"

# 4. version 4: the version-3 classifier fine-tuned on 40,000 new images and on the residuals
#    that the version-3 RDN leaves when it peels 16,000 2-galaxy and 8,000 3-galaxy blends
complete "$DATA/res2" || tfdeblend residuals "$DATA/mine2" --deblender "$RUNS/rdn_cpu_v3" --out "$DATA/res2" --steps 2
complete "$DATA/res3" || tfdeblend residuals "$DATA/mine3" --deblender "$RUNS/rdn_cpu_v3" --out "$DATA/res3" --steps 3
[ -f "$RUNS/vgg_cpu_res/classifier.keras" ] || tfdeblend train --phase 1 --net classifier "$DATA/classifier_big" "$DATA/res2" "$DATA/res3" --out "$RUNS/vgg_cpu_res" --config configs/cpu_classifier_res.yaml --init-from "$RUNS/joint_cpu_v2"

# 5. version 6: the version-3 deblender fine-tuned twice more (RDN stages 5 and 7): 30 minutes on
#    16,000 new blends, then 24 minutes on 15,000 of which 3,000 are close pairs; the version-5
#    classifier (= version 4's) is kept
complete "$DATA/deblender_s5" || tfdeblend simulate deblender --count 16000 --out "$DATA/deblender_s5" --seed 9
complete "$DATA/close15" || tfdeblend simulate deblender --count 3000 --max-shift 0.8 --out "$DATA/close15" --seed 15
complete "$DATA/norm11" || tfdeblend simulate deblender --count 8000 --out "$DATA/norm11" --seed 11
complete "$DATA/norm16" || tfdeblend simulate deblender --count 4000 --out "$DATA/norm16" --seed 16
[ -f "$RUNS/rdn_cpu_stage5/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender_s5" --out "$RUNS/rdn_cpu_stage5" --config configs/experiment_cpu_deblender_ft4.yaml --init-from "$RUNS/rdn_cpu_v3"
[ -f "$RUNS/rdn_cpu_stage7/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/close15" "$DATA/norm11" "$DATA/norm16" --out "$RUNS/rdn_cpu_stage7" --config configs/experiment_cpu_deblender_ft6.yaml --init-from "$RUNS/rdn_cpu_stage5"

# 6. export for TF Serving (saved_models/tfdeblend_cpu/<version>/; 8-view count, split, 2
#    refinement sweeps, residual detection at S/N 10 within 8 px of the peak, merging of
#    components closer than 3 px: the defaults; version 7 = version 6's networks with the last
#    two) and evaluate
tfdeblend export --deblender "$RUNS/rdn_cpu_stage7" --classifier "$RUNS/vgg_cpu_res" --out "$MODEL"
tfdeblend evaluate "$DATA/test2" "$DATA/test3" --model "$MODEL" --out report_v7 --baseline sep --baseline source-extractor --overwrite
