"""qwen_rlhf：train_sft.py / train_rm.py / train_ppo.py / benchmark.py / chat.py 共用的小模块。"""

import os

# 我们有意固定在 trl 1.12.0 并使用 trl.experimental.ppo（最后一个带 PPO 的版本），不必每次都警告它"不稳定"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
