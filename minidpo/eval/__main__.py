from minidpo.eval.cli import main

main()
