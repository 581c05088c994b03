"""postoffice: MS Mail shaped addresses (NET/PO/MBX) and the tree of Maildirs that holds them."""
