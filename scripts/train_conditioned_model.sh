#!/usr/bin/env bash
# Train the conditioned cpu model (networks that take each band's noise and PSF FWHM as input)
# on a 2-core CPU: version 9's networks are widened (the new inputs start at zero) and fine-tuned
# on data drawn over observing conditions. Steps: simulation, phase 1 RDN, the peel residuals of
# that RDN, phase 1 classifier (three times), the RDN and the classifier once more (version 12),
# the RDN with stars (version 14, step 8), export (step 9, two classifier steps tried and not
# shipped, runs only with TRY_STAR_VGG=1). About 185 minutes of training and 35 of simulation and residuals on 2 cores; the
# wall-clock minutes of each step go to $RUNS/conditioned_times.log.
# Rerunning the script skips finished steps and resumes interrupted ones (simulation finishes
# missing shards; training resumes from its backup/). Export and evaluation: docs/model_card.md.
set -euo pipefail
DATA=${DATA:-work_data}
RUNS=${RUNS:-runs}
BASE=${BASE:-saved_models/tfdeblend_cpu/9}  # version 9: first `git checkout 5826f9a -- saved_models/tfdeblend_cpu/9`
MODEL=${MODEL:-saved_models/tfdeblend_conditioned}
LOG="$RUNS/conditioned_times.log"
mkdir -p "$RUNS"

source "$(dirname "$0")/recipe_steps.sh"  # complete DIR, timed NAME COMMAND...
sim() {  # sim DIR ARGS...: simulate unless complete
  local dir=$1
  shift
  complete "$DATA/$dir" || timed "sim_$dir" tfdeblend simulate "$@" --out "$DATA/$dir" --quiet
}
LSST_RANGE=(--psf-scale 0.7:1.7 --exposure-scale 0.08:1)
HSC_RANGE=(--conditions hsc --psf-scale 0.8:1.4 --exposure-scale 0.3:2)

# 1. data over conditions (seeds 71-80, used by no other set)
sim rdn_lsst_mix deblender --count 6000 --seed 71 "${LSST_RANGE[@]}" --bright-fraction 0.15
sim rdn_hsc_mix deblender --count 3000 --seed 72 "${HSC_RANGE[@]}" --bright-fraction 0.15
sim rdn_nominal deblender --count 3000 --seed 73
sim rdn_close_mix deblender --count 2000 --seed 74 --max-shift 0.8 "${LSST_RANGE[@]}"
sim vgg_lsst_mix classifier --count 8000 --seed 75 "${LSST_RANGE[@]}" --bright-fraction 0.15
sim vgg_hsc_mix classifier --count 3000 --seed 76 "${HSC_RANGE[@]}" --bright-fraction 0.15
sim res2_src deblender --count 3000 --seed 77 "${LSST_RANGE[@]}" --bright-fraction 0.1
sim res3_src test --n-gal 3 --count 1500 --seed 78 "${LSST_RANGE[@]}"
sim res2_hsc_src deblender --count 1000 --seed 79 "${HSC_RANGE[@]}"
sim vgg_nominal classifier --count 4000 --seed 80

# 2. phase 1, deblender, from version 9's RDN (14 x 250 steps)
[ -f "$RUNS/cond_rdn/deblender.keras" ] || timed train_rdn tfdeblend train --phase 1 --net deblender \
  "$DATA/rdn_lsst_mix" "$DATA/rdn_hsc_mix" "$DATA/rdn_nominal" "$DATA/rdn_close_mix" \
  --out "$RUNS/cond_rdn" --config configs/conditioned_deblender.yaml --init-from "$BASE"

# 3. the peel residuals of that RDN, then phase 1, classifier, from version 9's classifier
for src in res2_src:2 res3_src:3 res2_hsc_src:2; do
  name=${src%%:*}; steps=${src##*:}; out=${name%_src}_res
  complete "$DATA/$out" || timed "residuals_$out" tfdeblend residuals "$DATA/$name" --deblender "$RUNS/cond_rdn" --out "$DATA/$out" --steps "$steps" --quiet
done
[ -f "$RUNS/cond_vgg/classifier.keras" ] || timed train_vgg tfdeblend train --phase 1 --net classifier \
  "$DATA/vgg_lsst_mix" "$DATA/vgg_hsc_mix" "$DATA/vgg_nominal" "$DATA/res2_res" "$DATA/res3_res" "$DATA/res2_hsc_res" \
  --out "$RUNS/cond_vgg" --config configs/conditioned_classifier.yaml --init-from "$BASE"

# 4. the classifier again at a third of the rate, with the RDN's residuals of nominal blends
#    added (the first step overcounted bright galaxies with faint neighbours at nominal depth)
complete "$DATA/res2_nominal_res" || timed residuals_nominal tfdeblend residuals "$DATA/rdn_nominal" --deblender "$RUNS/cond_rdn" --out "$DATA/res2_nominal_res" --steps 2 --quiet
[ -f "$RUNS/cond_vgg2/classifier.keras" ] || timed train_vgg2 tfdeblend train --phase 1 --net classifier \
  "$DATA/vgg_lsst_mix" "$DATA/vgg_hsc_mix" "$DATA/vgg_nominal" "$DATA/res2_res" "$DATA/res3_res" "$DATA/res2_hsc_res" "$DATA/res2_nominal_res" \
  --out "$RUNS/cond_vgg2" --config configs/conditioned_classifier_ft.yaml --init-from "$RUNS/cond_vgg"

# 5. version 11: the classifier a third time, with sets aimed at where version 10 was weak
#    (seeds 82-87): LSST year-1 depths, galaxies brighter than i = 17.5, PSFs x1.2-1.8, and
#    3-galaxy residuals at nominal conditions, beside all the sets above
Y1_RANGE=(--psf-scale 0.7:1.7 --exposure-scale 0.08:0.25)
sim vgg_year1 classifier --count 4000 --seed 82 "${Y1_RANGE[@]}" --bright-fraction 0.15
sim res2_year1_src deblender --count 3000 --seed 83 "${Y1_RANGE[@]}"
sim res2_bright_src deblender --count 2000 --seed 84 "${LSST_RANGE[@]}" --bright-fraction 0.5 --bright-mag 17.5
sim vgg_bright classifier --count 2000 --seed 85 "${LSST_RANGE[@]}" --bright-fraction 0.4 --bright-mag 17.5
sim res2_psfwide_src deblender --count 2000 --seed 86 --psf-scale 1.2:1.8
sim res3_nominal_src test --n-gal 3 --count 1000 --seed 87
for src in res2_year1_src:2 res2_bright_src:2 res2_psfwide_src:2 res3_nominal_src:3; do
  name=${src%%:*}; steps=${src##*:}; out=${name%_src}_res
  complete "$DATA/$out" || timed "residuals_$out" tfdeblend residuals "$DATA/$name" --deblender "$RUNS/cond_rdn" --out "$DATA/$out" --steps "$steps" --quiet
done
[ -f "$RUNS/cond_vgg3/classifier.keras" ] || timed train_vgg3 tfdeblend train --phase 1 --net classifier \
  "$DATA/vgg_lsst_mix" "$DATA/vgg_hsc_mix" "$DATA/vgg_nominal" "$DATA/res2_res" "$DATA/res3_res" "$DATA/res2_hsc_res" "$DATA/res2_nominal_res" \
  "$DATA/vgg_year1" "$DATA/vgg_bright" "$DATA/res2_year1_res" "$DATA/res2_bright_res" "$DATA/res2_psfwide_res" "$DATA/res3_nominal_res" \
  --out "$RUNS/cond_vgg3" --config configs/conditioned_classifier_v11.yaml --init-from "$RUNS/cond_vgg2"

# 6. version 12: the RDN a second time, with galaxies brighter than i = 17.5 and year-1 depths
#    added (seeds 88, 89), every residual set made again with it, and the classifier a fourth time
#    on them plus 6,000 more nominal images (seed 90)
sim rdn_bright deblender --count 3000 --seed 88 "${LSST_RANGE[@]}" --bright-fraction 0.5 --bright-mag 17.5
sim rdn_year1 deblender --count 3000 --seed 89 "${Y1_RANGE[@]}" --bright-fraction 0.15
sim vgg_nominal2 classifier --count 6000 --seed 90
[ -f "$RUNS/cond_rdn12/deblender.keras" ] || timed train_rdn12 tfdeblend train --phase 1 --net deblender \
  "$DATA/rdn_lsst_mix" "$DATA/rdn_hsc_mix" "$DATA/rdn_nominal" "$DATA/rdn_close_mix" "$DATA/rdn_bright" "$DATA/rdn_year1" \
  --out "$RUNS/cond_rdn12" --config configs/conditioned_deblender_v12.yaml --init-from "$RUNS/cond_rdn"
RES12=()
for src in res2_src:2 res3_src:3 res2_hsc_src:2 rdn_nominal:2 res2_year1_src:2 res2_bright_src:2 res2_psfwide_src:2 res3_nominal_src:3; do
  name=${src%%:*}; steps=${src##*:}; out=${name%_src}_res12
  complete "$DATA/$out" || timed "residuals_$out" tfdeblend residuals "$DATA/$name" --deblender "$RUNS/cond_rdn12" --out "$DATA/$out" --steps "$steps" --quiet
  RES12+=("$DATA/$out")
done
[ -f "$RUNS/cond_vgg4/classifier.keras" ] || timed train_vgg4 tfdeblend train --phase 1 --net classifier \
  "$DATA/vgg_lsst_mix" "$DATA/vgg_hsc_mix" "$DATA/vgg_nominal" "$DATA/vgg_year1" "$DATA/vgg_bright" "$DATA/vgg_nominal2" "${RES12[@]}" \
  --out "$RUNS/cond_vgg4" --config configs/conditioned_classifier_v12.yaml --init-from "$RUNS/cond_vgg3"

# 8. version 14 (2026-12-07, sixth session): stars. Version 13's networks (BASE14, the shipped
#    export) fine-tuned with stars among the sources (--star-fraction; tfdeblend/stars.py): the
#    RDN on six smaller replay sets drawn as version 12's plus two star sets (seeds 101-108).
#    About 29 minutes of training and 6 of simulation on 2 cores. Version 13's networks
#    are runs/cond_rdn12 and runs/cond_vgg4 (step 6; the shipped version 13 holds the same ones:
#    `git checkout dff4f43~1 -- saved_models/tfdeblend_cpu/13` and BASE14=that directory).
#    The classifier step is step 9.
BASE14=${BASE14:-}
RDN13=${BASE14:-$RUNS/cond_rdn12}
VGG13=${BASE14:-$RUNS/cond_vgg4}
sim s14_rdn_lsst deblender --count 3000 --seed 101 "${LSST_RANGE[@]}" --bright-fraction 0.15
sim s14_rdn_hsc deblender --count 1500 --seed 102 "${HSC_RANGE[@]}" --bright-fraction 0.15
sim s14_rdn_year1 deblender --count 1500 --seed 103 "${Y1_RANGE[@]}" --bright-fraction 0.15
sim s14_rdn_bright deblender --count 1500 --seed 104 "${LSST_RANGE[@]}" --bright-fraction 0.5 --bright-mag 17.5
sim s14_rdn_close deblender --count 1000 --seed 105 --max-shift 0.8 "${LSST_RANGE[@]}"
sim s14_rdn_nominal deblender --count 1500 --seed 106
sim s14_rdn_stars deblender --count 4000 --seed 107 "${LSST_RANGE[@]}" --bright-fraction 0.15 --star-fraction 0.5
sim s14_rdn_stars_hsc deblender --count 1500 --seed 108 "${HSC_RANGE[@]}" --star-fraction 0.5
[ -f "$RUNS/star_rdn/deblender.keras" ] || timed train_rdn14 tfdeblend train --phase 1 --net deblender \
  "$DATA"/s14_rdn_{lsst,hsc,year1,bright,close,nominal,stars,stars_hsc} \
  --out "$RUNS/star_rdn" --config configs/experiment_conditioned_deblender_stars.yaml --init-from "$RDN13"
# 9. Tried, not shipped (docs/model_card.md, "Version 15"): version 13's classifier fine-tuned
#    with stars, on five replay sets, a star set and the new RDN's peel residuals on five sets
#    (seeds 109, 112-121; configs/experiment_conditioned_classifier_stars.yaml, sixth session),
#    and the same with as many bright-galaxy images and residuals as star images (seeds 123,
#    124; configs/experiment_conditioned_classifier_stars_balanced.yaml, seventh session). Both
#    lost "high" at nominal depth; TRY_STAR_VGG=1 runs them (15-25 minutes of training each).
if [ "${TRY_STAR_VGG:-0}" = 1 ]; then
sim s14_vgg_stars classifier --count 4000 --seed 109 "${LSST_RANGE[@]}" --star-fraction 0.3
sim s14_vgg_lsst classifier --count 3000 --seed 112 "${LSST_RANGE[@]}" --bright-fraction 0.15
sim s14_vgg_hsc classifier --count 1500 --seed 113 "${HSC_RANGE[@]}" --bright-fraction 0.15
sim s14_vgg_nominal classifier --count 3000 --seed 114
sim s14_vgg_year1 classifier --count 1500 --seed 115 "${Y1_RANGE[@]}" --bright-fraction 0.15
sim s14_vgg_bright classifier --count 1000 --seed 116 "${LSST_RANGE[@]}" --bright-fraction 0.4 --bright-mag 17.5
sim s14_res2_mix_src deblender --count 2000 --seed 117 "${LSST_RANGE[@]}" --bright-fraction 0.1
sim s14_res2_stars_src deblender --count 1500 --seed 118 "${LSST_RANGE[@]}" --star-fraction 0.5
sim s14_res3_src test --n-gal 3 --count 1000 --seed 119 "${LSST_RANGE[@]}" --star-fraction 0.2
sim s14_res2_y1_src deblender --count 1000 --seed 120 "${Y1_RANGE[@]}"
sim s14_res2_hsc_src deblender --count 800 --seed 121 "${HSC_RANGE[@]}" --star-fraction 0.2
sim s15_res2_bright_src deblender --count 2000 --seed 123 "${LSST_RANGE[@]}" --bright-fraction 0.5 --bright-mag 17.5
sim s15_vgg_bright classifier --count 2000 --seed 124 "${LSST_RANGE[@]}" --bright-fraction 0.4 --bright-mag 17.5
RES14=()
for src in s14_res2_mix_src:2 s14_res2_stars_src:2 s14_res3_src:3 s14_res2_y1_src:2 s14_res2_hsc_src:2 s15_res2_bright_src:2; do
  name=${src%%:*}; steps=${src##*:}; out=${name%_src}_res
  complete "$DATA/$out" || timed "residuals_$out" tfdeblend residuals "$DATA/$name" --deblender "$RUNS/star_rdn" --out "$DATA/$out" --steps "$steps" --quiet
  RES14+=("$DATA/$out")
done
[ -f "$RUNS/star_vgg_bal/classifier.keras" ] || timed train_vgg15 tfdeblend train --phase 1 --net classifier \
  "$DATA"/s14_vgg_{lsst,hsc,nominal,year1,bright,stars} "$DATA/s15_vgg_bright" "${RES14[@]}" \
  --out "$RUNS/star_vgg_bal" --config configs/experiment_conditioned_classifier_stars_balanced.yaml --init-from "$VGG13"
[ -f "$RUNS/star_vgg/classifier.keras" ] || timed train_vgg14 tfdeblend train --phase 1 --net classifier \
  "$DATA"/s14_vgg_{lsst,hsc,nominal,year1,bright,stars} "${RES14[@]:0:5}" \
  --out "$RUNS/star_vgg" --config configs/experiment_conditioned_classifier_stars.yaml --init-from "$VGG13"
fi

# 7. export (version 10 of the shipped model was cond_rdn + cond_vgg2, version 11 cond_rdn +
#    cond_vgg3; versions 12 and 13 are below: version 13 is the same networks exported with the
#    peel's prior_three -1, the default since then, chosen on the validation sets with
#    scripts/count_trajectories.py; docs/model_card.md, "Version 13"; version 14 was step 8's
#    RDN with version 13's classifier and peel; version 15 is the same networks with the peel's
#    separated split, split_distance 10, now the default, below)
[ -d "$MODEL" ] || tfdeblend export --deblender "$RUNS/star_rdn" --classifier "$VGG13" --out "$MODEL"
echo "trained and exported: $MODEL"
