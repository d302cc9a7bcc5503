from neuron.worker.main import main

raise SystemExit(main())
