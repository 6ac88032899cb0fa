# One call: start the chain if it is neither running nor done, wait for it up to ${1:-560} s,
# pack what it has so far into $OUT.
source .dev31/env.sh
if [ ! -f $W/CHAIN_DONE ] && ! pgrep -f chain32.sh >/dev/null; then
  el "starting chain"; setsid nohup bash .dev31/chain32.sh >> $W/chain.log 2>&1 < /dev/null & sleep 2
fi
end=$(( $(date +%s) + ${1:-560} ))
while [ ! -f $W/CHAIN_DONE ] && [ $(date +%s) -lt $end ]; do sleep 5; done
grep -v "source …\|build …\|validate …" $W/chain.log | tail -40; uptime
ps -eo pid,etimes,pcpu,rss,args --sort=-pcpu | grep -v "ps -eo" | head -8 | cut -c1-200
cp $W/chain.log $OUT/ 2>/dev/null; tar cJf $OUT/out.tar.xz -C $W out 2>/dev/null; ls -la $OUT; el end
