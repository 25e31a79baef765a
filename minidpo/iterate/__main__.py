from minidpo.iterate.loop import main

main()
