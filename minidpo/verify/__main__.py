from minidpo.verify.cli import main

main()
