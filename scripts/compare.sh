#!/usr/bin/env bash
# 同一个 SFT、同一个 RM、同一批留出问题：GRPO / RLOO / DPO 各跑几个种子，PPO 用已有的（没有就训练一个），再训练一个
# 独立的金标准评委，最后一次评测把它们放在一起比：每个模型相对 SFT 的提升、胜率、精确 KL（带 95% 区间），每个方法跨种子的
# 均值 ± 标准差，以及训练轨迹（每次训练中存下的快照：代理 RM 分和金标准分随 KL 怎样变化，有没有奖励过度优化）。
#
#   bash scripts/compare.sh                  # 离线迷你演示（configs/tiny/*.yaml，CPU），3 个种子，产物在 checkpoint/tiny/compare/
#   SEEDS="1 2" METHODS="grpo dpo" bash scripts/compare.sh   # 只跑其中几个
#   METHODS="ppo grpo rloo dpo" bash scripts/compare.sh      # PPO 也按种子各跑一个
#   WEAK_KL=1 bash scripts/compare.sh        # 另加 KL 系数为 0 的 PPO 和 GRPO 各一次：不拉住它们时离 SFT 多远、金标准分怎样
#   RPO=1 bash scripts/compare.sh            # 另加 DPO + chosen 上的 NLL 项（RPO：TRL 1.12 里是 --loss_type sigmoid sft
#                                            # --loss_weights 1.0 1.0，旧的 rpo_alpha 已去掉），每个种子一个，和普通 DPO 并排：
#                                            # 对付 DPO 把概率从 chosen 上挪走（"似然位移"）的常用办法
#   RULES=1 bash scripts/compare.sh          # 另加 GRPO 训练在 rm + repetition（权重 1.0 0.5）上，每个种子一个，和只用 rm 的 GRPO
#                                            # 并排：报告里两者的代理分、金标准分、规则:repetition 和 distinct-2
#   JOBS=1 bash scripts/compare.sh           # 一次只训练一个（迷你演示默认同时两个：两个核，每个单线程；日志在 <输出>/logs/）
#   bash scripts/compare.sh --real           # 真实尺寸：脚本默认值（GPU），读 checkpoint/sft、checkpoint/rm（和 checkpoint/rm_gold），
#                                            # 写到 checkpoint/compare/
#
# 迷你演示会先建好（或复用）checkpoint/tiny/ 下的基座、SFT、RM 和金标准评委；真实尺寸要先跑完 train_sft.py 和 train_rm.py
# （金标准评委：python train_rm.py --role gold，没有它时只用代理 RM 打分）。
# 已经训练好的模型文件夹会跳过（重跑只补缺的）；评测每次写一个新文件夹。
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-1 2 3}"
METHODS="${METHODS:-grpo rloo dpo}"
# 先检查 METHODS 和 SEEDS，再做任何准备：方法名来自阶段登记表（qwen_rlhf/stages.py 只用标准库，python3 就能读）
KNOWN="$(python3 -c 'from qwen_rlhf.stages import rl_stages; print(*rl_stages())')"
registry() {  # registry <阶段> <字段>：登记表里这个阶段的一项（inputs：它读哪些阶段的产物；kl_option：KL 系数的选项名）
  python3 -c 'import sys; from qwen_rlhf.stages import STAGES; v = getattr(STAGES[sys.argv[1]], sys.argv[2]); print(*v) if isinstance(v, tuple) else print(v)' "$1" "$2"
}
for m in $METHODS; do
  if [[ " $KNOWN " != *" $m "* ]]; then
    echo "错误：METHODS 里的 \"$m\" 不是能对比的方法；可用的有 $KNOWN（例如 METHODS=\"grpo dpo\"）。" >&2; exit 2
  fi
done
for s in $SEEDS; do
  [[ "$s" =~ ^[0-9]+$ ]] || { echo "错误：SEEDS 里的 \"$s\" 不是非负整数（例如 SEEDS=\"1 2 3\"）。" >&2; exit 2; }
done
# 同时跑几个训练：GPU 上一个（一张卡）；迷你演示在 CPU 上两个（每个单线程：小模型的训练大半是 import 和加载，
# 两个进程各占一个核比一个进程用两个核快），各自的输出写到 <输出>/logs/<名字>.log，终端里每个一行开始、一行结束
pids=(); names=()
launch() {  # launch <名字> <命令…>
  if [ "$JOBS" -le 1 ]; then "${@:2}"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done  # 失败的在 await / finish 里一起说
  echo "[对比] 开始 $1（日志 $logs/$1.log）"
  ( export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; "${@:2}" > "$logs/$1.log" 2>&1 && echo "[对比] 完成 $1" ) &
  pids+=($!); names+=("$1")
}
await() {  # await <名字…>：等 launch 起的这几个结束（别的照跑）。有失败的：先等其余的也结束（不留下还在跑的训练），
           # 再一行说是哪几个、日志在哪，退出
  local failed=() i n
  for n in "$@"; do
    for i in "${!names[@]}"; do
      if [ "${names[$i]}" = "$n" ]; then
        wait "${pids[$i]}" || failed+=("$n")
        unset 'pids[i]' 'names[i]'
      fi
    done
  done
  if [ ${#failed[@]} -gt 0 ]; then
    for i in "${!names[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
    echo "错误：${failed[*]} 没有训练完；看 $logs/ 里对应的日志，修好后重跑本脚本（已训练好的会跳过）。" >&2; exit 1
  fi
}
finish() { await "${names[@]}"; }  # 等 launch 起的全部结束
if [ "${1:-}" = "--real" ]; then
  PY="${PYTHON:-python}"
  root=checkpoint; out=checkpoint/compare; recipe() { :; }
  JOBS="${JOBS:-1}"
else
  bash scripts/setup_venv.sh
  source scripts/cpu_env.sh
  PY="${VENV:-.venv}/bin/python"
  export TOKENIZERS_PARALLELISM=false
  root=checkpoint/tiny; out=checkpoint/tiny/compare
  recipe() { echo --config "configs/tiny/$1.yaml"; }
  JOBS="${JOBS:-2}"
fi
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "错误：JOBS 要是正整数（例如 JOBS=1），现在是 \"$JOBS\"。" >&2; exit 2; }
logs="$out/logs"; mkdir -p "$logs"
stop() {  # Ctrl-C：终端把 SIGINT 也发给了后台的训练；只给脚本发 SIGTERM（kill、timeout）时它们收不到。两种情况都给它们
  trap - INT TERM  # 发 SIGTERM（训练中的存下检查点后退出），等都停下再退出：不留下还在跑的训练
  local p
  for p in "${pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "[对比] 已中断：后台的训练都已停下。重新运行本脚本：训练好的跳过，没训练完的从头训练（日志在 $logs/）。" >&2
  exit 130
}
trap stop INT TERM
if [ "${1:-}" != "--real" ]; then
  # 金标准评委：更大的迷你基座、另一个种子，只用来评测（见 configs/tiny/rm_gold.yaml）；它不用迷你基座，和它同时开始建
  gold_rm() { "$PY" scripts/make_tiny_model.py --size gold --out "$root/base_gold" && "$PY" train_rm.py $(recipe rm_gold) \
    --overwrite_output_dir true; }
  [ -f "$root/rm_gold/stage.json" ] || launch rm_gold gold_rm
  [ -f "$root/base/config.json" ] || "$PY" scripts/make_tiny_model.py
  [ -f "$root/sft/stage.json" ] || launch sft "$PY" train_sft.py $(recipe sft) --overwrite_output_dir true
  [ -f "$root/rm/stage.json" ] || launch rm "$PY" train_rm.py $(recipe rm) --overwrite_output_dir true
  # 空评委：代理 RM 的基座和数据、另一个种子（见 configs/tiny/rm_null.yaml）：量出两个只差种子的 RM 本来就有的分歧
  [ -f "$root/rm_null/stage.json" ] || launch rm_null "$PY" train_rm.py $(recipe rm_null) --overwrite_output_dir true
  await sft rm  # 下面的训练只要 SFT 和 RM；两位评委只有最后的评测用到，它们在后台接着训练，不挡后面的
fi
[ -f "$root/sft/stage.json" ] && [ -f "$root/rm/stage.json" ] || {
  echo "错误：$root/sft 或 $root/rm 还没有训练好；请先运行 python train_sft.py 和 python train_rm.py。" >&2; exit 3; }
start=$(date +%s)
models=sft
if [[ " $METHODS " != *" ppo "* ]]; then   # PPO 不按种子跑：用流水线里那一个（演示 / train_ppo.py 写的），没有就现在训练
  [ -f "$root/ppo/stage.json" ] || launch ppo "$PY" train_ppo.py $(recipe ppo) --overwrite_output_dir true
  models="$models,ppo"
fi
train() {  # train <方法> <结果文件夹> <种子> [额外选项…]：已经训练好的跳过
  local m="$1" dir="$2" seed="$3"; shift 3
  models="$models,$dir"
  if [ -f "$dir/stage.json" ]; then echo "[对比] 已有 $dir，跳过"; return; fi
  local rm_opt=(); [[ " $(registry "$m" inputs) " == *" rm "* ]] && rm_opt=(--reward_model_path "$root/rm")  # DPO 不用 RM
  echo "[对比] $m，种子 $seed $* -> $dir"
  launch "$(basename "$dir")" "$PY" "train_$m.py" $(recipe "$m") --sft_model_path "$root/sft" "${rm_opt[@]}" \
    --output_dir "$dir" --seed "$seed" --overwrite_output_dir true "$@"
}
for seed in $SEEDS; do
  for m in $METHODS; do
    train "$m" "$out/$m-seed$seed" "$seed"
  done
  if [ "${RPO:-0}" = 1 ]; then train dpo "$out/dpo-rpo-seed$seed" "$seed" --loss_type sigmoid sft --loss_weights 1.0 1.0; fi
  if [ "${RULES:-0}" = 1 ]; then
    [[ " $METHODS " == *" grpo "* ]] || train grpo "$out/grpo-seed$seed" "$seed"   # 对照：同一种子只用 rm 的 GRPO
    train grpo "$out/grpo-rep-seed$seed" "$seed" --reward_funcs rm repetition --reward_weights 1.0 0.5
  fi
done
if [ "${WEAK_KL:-0}" = 1 ]; then  # 对照：没有 KL 拉住的 PPO 和 GRPO（第一个种子各一次）
  first="${SEEDS%% *}"
  train ppo "$out/ppo-kl0-seed$first" "$first" "--$(registry ppo kl_option)" 0
  train grpo "$out/grpo-beta0-seed$first" "$first" "--$(registry grpo kl_option)" 0
fi
finish
gold=(); [ -f "$root/rm_gold/stage.json" ] && gold=(--gold_model_path "$root/rm_gold")
[ -f "$root/rm_null/stage.json" ] && gold+=(--null_model_path "$root/rm_null")
"$PY" benchmark.py $(recipe benchmark) --sft_model_path "$root/sft" --ppo_model_path "$root/ppo" --reward_model_path "$root/rm" \
  "${gold[@]}" --models "$models" --trajectory true --output_dir "$out/benchmark"
echo "[对比] 全部完成，用时 $(( $(date +%s) - start )) 秒；报告在 $out/benchmark/ 下最新的文件夹里（report.md、trajectory.csv、reward_vs_kl.png）。"
