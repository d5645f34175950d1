#!/usr/bin/env bash
# 同一个 SFT、同一个 RM、同一批留出问题：GRPO / RLOO / DPO 各跑几个种子，PPO 用已有的（没有就训练一个），
# 最后一次评测把它们放在一起比（每个模型相对 SFT 的提升、胜率、KL 带 95% 区间，每个方法跨种子的均值 ± 标准差）。
#
#   bash scripts/compare.sh                  # 离线迷你演示（configs/tiny/*.yaml，CPU），3 个种子，产物在 checkpoint/tiny/compare/
#   SEEDS="1 2" METHODS="grpo dpo" bash scripts/compare.sh   # 只跑其中几个
#   METHODS="ppo grpo rloo dpo" bash scripts/compare.sh      # PPO 也按种子各跑一个
#   bash scripts/compare.sh --real           # 真实尺寸：脚本默认值（GPU），读 checkpoint/sft 和 checkpoint/rm，写到 checkpoint/compare/
#
# 迷你演示会先建好（或复用）checkpoint/tiny/ 下的基座、SFT 和 RM；真实尺寸要先跑完 train_sft.py 和 train_rm.py。
# 已经训练好的模型文件夹会跳过（重跑只补缺的）；评测每次写一个新文件夹。
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-1 2 3}"
METHODS="${METHODS:-grpo rloo dpo}"
if [ "${1:-}" = "--real" ]; then
  PY="${PYTHON:-python}"
  root=checkpoint; out=checkpoint/compare; recipe() { :; }
else
  bash scripts/setup_venv.sh
  source scripts/cpu_env.sh
  PY="${VENV:-.venv}/bin/python"
  export TOKENIZERS_PARALLELISM=false
  root=checkpoint/tiny; out=checkpoint/tiny/compare
  recipe() { echo --config "configs/tiny/$1.yaml"; }
  "$PY" scripts/make_tiny_model.py
  [ -f "$root/sft/stage.json" ] || "$PY" train_sft.py $(recipe sft) --overwrite_output_dir true
  [ -f "$root/rm/stage.json" ] || "$PY" train_rm.py $(recipe rm) --overwrite_output_dir true
fi
[ -f "$root/sft/stage.json" ] && [ -f "$root/rm/stage.json" ] || {
  echo "错误：$root/sft 或 $root/rm 还没有训练好；请先运行 python train_sft.py 和 python train_rm.py。" >&2; exit 3; }
start=$(date +%s)
models=sft
if [[ " $METHODS " != *" ppo "* ]]; then   # PPO 不按种子跑：用流水线里那一个（演示 / train_ppo.py 写的），没有就现在训练
  [ -f "$root/ppo/stage.json" ] || "$PY" train_ppo.py $(recipe ppo) --overwrite_output_dir true
  models="$models,ppo"
fi
for seed in $SEEDS; do
  for m in $METHODS; do
    dir="$out/$m-seed$seed"
    models="$models,$dir"
    if [ -f "$dir/stage.json" ]; then echo "[对比] 已有 $dir，跳过"; continue; fi
    rm_opt=(--reward_model_path "$root/rm"); [ "$m" = dpo ] && rm_opt=()   # DPO 只用偏好对，不用 RM
    echo "[对比] $m，种子 $seed -> $dir"
    "$PY" "train_$m.py" $(recipe "$m") --sft_model_path "$root/sft" "${rm_opt[@]}" --output_dir "$dir" --seed "$seed" \
      --overwrite_output_dir true
  done
done
"$PY" benchmark.py $(recipe benchmark) --sft_model_path "$root/sft" --ppo_model_path "$root/ppo" --reward_model_path "$root/rm" \
  --models "$models" --output_dir "$out/benchmark"
echo "[对比] 全部完成，用时 $(( $(date +%s) - start )) 秒；报告在 $out/benchmark/ 下最新的文件夹里。"
