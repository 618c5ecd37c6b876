#!/usr/bin/env bash
# Reproduce the shipped model saved_models/tfdeblend_cpu (version 2) from scratch on a 2-core CPU
# machine (about 3 hours of training). Every step is a plain tfdeblend command; rerunning the
# script skips finished steps and resumes interrupted ones (simulation finishes missing shards,
# training resumes from its backup/).
set -euo pipefail
DATA=${DATA:-work_data}
RUNS=${RUNS:-runs}
MODEL=${MODEL:-saved_models/tfdeblend_cpu}

# 1. data from the built-in catalog (each set has its own seed: no test blend is a training blend)
[ -f "$DATA/deblender/manifest.json" ] || tfdeblend simulate deblender --out "$DATA/deblender" --preset cpu --seed 1
[ -f "$DATA/classifier/manifest.json" ] || tfdeblend simulate classifier --out "$DATA/classifier" --preset cpu --seed 2
[ -f "$DATA/test2/blends.fits" ] || tfdeblend simulate test --n-gal 2 --count 1000 --format fits --out "$DATA/test2" --seed 3
[ -f "$DATA/test3/blends.fits" ] || tfdeblend simulate test --n-gal 3 --count 1000 --format fits --out "$DATA/test3" --seed 4

# 2. phase 1: each network alone (the deblender in three stages, the classifier in two)
[ -f "$RUNS/rdn_cpu/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender" --out "$RUNS/rdn_cpu" --config configs/cpu_deblender.yaml
[ -f "$RUNS/rdn_cpu_ft1/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender" --out "$RUNS/rdn_cpu_ft1" --config configs/cpu_deblender_ft1.yaml --init-from "$RUNS/rdn_cpu"
[ -f "$RUNS/rdn_cpu_v2/deblender.keras" ] || tfdeblend train --phase 1 --net deblender "$DATA/deblender" --out "$RUNS/rdn_cpu_v2" --config configs/cpu_deblender_ft2.yaml --init-from "$RUNS/rdn_cpu_ft1"
[ -f "$RUNS/vgg_cpu/classifier.keras" ] || tfdeblend train --phase 1 --net classifier "$DATA/classifier" --out "$RUNS/vgg_cpu" --config configs/cpu_classifier.yaml
[ -f "$RUNS/vgg_cpu_ft/classifier.keras" ] || tfdeblend train --phase 1 --net classifier "$DATA/classifier" --out "$RUNS/vgg_cpu_ft" --config configs/cpu_classifier_ft.yaml --init-from "$RUNS/vgg_cpu"

# 3. phase 2: both networks jointly in the iterative setting
[ -f "$RUNS/joint_cpu_v2/deblender.keras" ] || tfdeblend train --phase 2 "$DATA/deblender" --deblender "$RUNS/rdn_cpu_v2" --classifier "$RUNS/vgg_cpu_ft" --out "$RUNS/joint_cpu_v2" --config configs/cpu_joint_v2.yaml

# 4. export for TF Serving (saved_models/tfdeblend_cpu/<version>/) and evaluate
tfdeblend export "$RUNS/joint_cpu_v2" --out "$MODEL"
tfdeblend evaluate "$DATA/test2" "$DATA/test3" --model "$MODEL" --out report_cpu --baseline sep --overwrite
