# v88, tree 59e3129, call 7's machine: two starts of `generate` on 1B with the default --blas-store (auto), the second
# taking the first's choices; output read from the call's reply (no files), summarised in ../README.md
for i in 1 2; do PYTHONPATH=src timeout 100 python3 -m rollgraph -v generate --model llama-3.2-1b --mode graphs --tokens 1,2,3,4,5 --max-new-tokens 8 --json 2>&1 | grep -E "timed now|output_tokens|chosen by" | cut -c1-400; done; ls -la /tmp/torchinductor_*/rollgraph_blas_choices.json
