"""Few-shot drug design on the molecule domain: choosing which molecules to measure next (active selection,
:mod:`fewshot.drug.selection` with the acquisition functions of :mod:`fewshot.drug.acquisition`) and proposing new
structures (the graph-based genetic algorithm of :mod:`fewshot.drug.design`, drug-likeness in
:mod:`fewshot.drug.properties`, judged by the proxy oracle of :mod:`fewshot.drug.oracle`)."""
